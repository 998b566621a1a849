// Turns every <textarea class="code-editor"> into a CodeMirror 5 editor (vendored, no build step): Python
// highlighting unless an enclosing element's data-editor-mode names another mode, read-only for a readonly
// textarea. CodeMirror copies its text back into the textarea when the form is submitted.
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("textarea.code-editor").forEach(function (textarea) {
    var host = textarea.closest("[data-editor-mode]");
    var editor = CodeMirror.fromTextArea(textarea, {
      mode: host ? host.dataset.editorMode : "python",
      readOnly: textarea.readOnly,
      lineNumbers: true,
      lineWrapping: true,
      indentUnit: 4,
      tabSize: 4,
      indentWithTabs: false,
      viewportMargin: Infinity,
      extraKeys: {Tab: function (cm) { cm.execCommand(cm.somethingSelected() ? "indentMore" : "insertSoftTab"); }},
    });
    editor.setSize(null, "auto");
  });
});
