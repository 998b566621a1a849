// Test tab: picking a saved event copies its JSON into the invoke form's event box.
(function () {
  var picker = document.getElementById("event-picker");
  var data = document.getElementById("saved-events");
  if (!picker || !data) return;
  var events = JSON.parse(data.textContent);
  picker.addEventListener("change", function () {
    if (picker.value) document.getElementById(picker.dataset.target).value = events[picker.value];
  });
})();
