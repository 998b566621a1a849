// The Triggers tab's schedule form: the next ten ticks of the expression, or why it is invalid, as you type.
(function () {
  var box = document.getElementById("schedule-preview");
  var expression = document.getElementById("id_expression");
  var zone = document.getElementById("id_timezone");
  if (!box || !expression || !zone) return;
  var note = document.getElementById("schedule-preview-note");
  var list = document.getElementById("schedule-preview-times");
  var timer = null;
  var asked = 0;

  function shown(iso, timeZone) {
    var moment = new Date(iso);
    var options = { weekday: "short", year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", hour12: false };
    var local;
    try {
      local = new Intl.DateTimeFormat("en-CA", Object.assign({ timeZone: timeZone }, options)).format(moment);
    } catch (error) {
      local = "";
    }
    var utc = new Intl.DateTimeFormat("en-CA", Object.assign({ timeZone: "UTC" }, options)).format(moment);
    return local && timeZone !== "UTC" ? local + " " + timeZone + " · " + utc + " UTC" : utc + " UTC";
  }

  function render(answer, ok, timeZone) {
    list.replaceChildren();
    if (!ok) {
      note.textContent = answer.message || "Not a valid expression.";
      note.className = "error";
      return;
    }
    note.className = "muted";
    note.textContent = answer.fire_times.length ? "The next " + answer.fire_times.length + " ticks:" : "It never fires again.";
    answer.fire_times.forEach(function (iso) {
      var item = document.createElement("li");
      item.textContent = shown(iso, timeZone);
      list.appendChild(item);
    });
  }

  function preview() {
    var text = expression.value.trim();
    if (!text) {
      list.replaceChildren();
      note.className = "muted";
      note.textContent = "The next ten ticks show here as you type.";
      return;
    }
    var timeZone = zone.value.trim() || "UTC";
    var number = ++asked;
    var query = new URLSearchParams({ expression: text, timezone: timeZone });
    fetch(box.dataset.preview + "?" + query, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        return response.json().then(function (answer) { return [answer, response.ok]; });
      })
      .then(function (result) {
        if (number === asked) render(result[0], result[1], timeZone);  // an older answer arriving late is dropped
      })
      .catch(function () {
        if (number === asked) render({ message: "The preview is unavailable." }, false, timeZone);
      });
  }

  function soon() {
    clearTimeout(timer);
    timer = setTimeout(preview, 250);
  }

  expression.addEventListener("input", soon);
  zone.addEventListener("input", soon);
  preview();
})();
