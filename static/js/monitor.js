// Monitor tab: draws each server-built plotly figure from its <script type="application/json"> element.
document.querySelectorAll(".plot[data-figure]").forEach(function (element) {
  var figure = JSON.parse(document.getElementById(element.dataset.figure).textContent);
  var layout = Object.assign({autosize: true}, figure.layout || {});
  Plotly.newPlot(element, figure.data || [], layout, {responsive: true, displaylogo: false});
});
