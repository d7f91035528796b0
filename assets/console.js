// Progressive enhancement only: every form works without this file.
(function () {
  "use strict";
  // Copy buttons: copy the named field's value and say so.
  document.querySelectorAll("button[data-copy]").forEach(function (b) {
    b.addEventListener("click", function () {
      var field = document.getElementById(b.getAttribute("data-copy"));
      var status = document.getElementById("copy-status");
      var done = function () { if (status) status.textContent = "Copied to the clipboard."; b.textContent = "Copied"; };
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(field.value).then(done, function () { field.select(); document.execCommand("copy"); done(); });
      } else { field.select(); document.execCommand("copy"); done(); }
    });
  });
  // A page showing a secret once asks before it is left, unless left through its own links.
  var secretPage = document.querySelector("[data-secret-page]");
  if (secretPage) {
    var question = secretPage.getAttribute("data-leave-question") || "Have you stored the key? It will not be shown again.";
    var leaving = false;
    document.querySelectorAll("a[data-leave]").forEach(function (a) {
      a.addEventListener("click", function (e) {
        if (!window.confirm(question)) { e.preventDefault(); return; }
        leaving = true;
      });
    });
    window.addEventListener("beforeunload", function (e) { if (!leaving) { e.preventDefault(); e.returnValue = ""; } });
  }
  // Forms that destroy something confirm first.
  document.querySelectorAll("form[data-confirm]").forEach(function (f) {
    f.addEventListener("submit", function (e) {
      if (!window.confirm(f.getAttribute("data-confirm"))) e.preventDefault();
    });
  });
})();
