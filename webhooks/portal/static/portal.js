// The portal's one script, loaded from this origin (the Content-Security-Policy allows no
// inline script). Pages work without it: times then stay in UTC and the secret is copied by hand.
"use strict";
(function () {
  // Times: the server writes <time datetime="…Z">… UTC</time>; show them in the viewer's zone.
  var zone = "UTC";
  try {
    zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  } catch (e) { /* keep UTC */ }
  var format = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"
  });
  document.querySelectorAll("time[datetime]").forEach(function (element) {
    var moment = new Date(element.getAttribute("datetime"));
    if (isNaN(moment.getTime())) { return; }
    element.title = element.textContent;
    element.textContent = format.format(moment);
  });
  document.querySelectorAll("[data-zone]").forEach(function (element) {
    element.textContent = "your time zone (" + zone + ")";
  });

  // A portal link opens a page that asks to continue (fetching the link uses nothing up, so
  // mail scanners and chat previews cannot spend it); in a browser it continues at once.
  document.querySelectorAll("form[data-autosubmit]").forEach(function (form) {
    form.submit();
  });

  // The copy button of a secret shown once.
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var field = document.getElementById(button.getAttribute("data-copy"));
      if (!field) { return; }
      field.select();
      var done = function () {
        document.querySelectorAll("[data-copied]").forEach(function (note) { note.hidden = false; });
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(field.value).then(done, function () {});
      } else if (document.execCommand && document.execCommand("copy")) {
        done();
      }
    });
  });
})();
