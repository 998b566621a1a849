// Turns every <textarea class="code-editor"> into a CodeMirror 5 Python editor (vendored, no build step).
// CodeMirror copies its text back into the textarea when the form is submitted.
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("textarea.code-editor").forEach(function (textarea) {
    var editor = CodeMirror.fromTextArea(textarea, {
      mode: "python",
      lineNumbers: true,
      indentUnit: 4,
      tabSize: 4,
      indentWithTabs: false,
      viewportMargin: Infinity,
      extraKeys: {Tab: function (cm) { cm.execCommand(cm.somethingSelected() ? "indentMore" : "insertSoftTab"); }},
    });
    editor.setSize(null, "auto");
  });
});
