// Sends the build request form to the JSON API (POST /buildAsync) and opens the build
// page. Without JavaScript the form posts to /ui/request, which does the same.
(function () {
  "use strict";
  var form = document.getElementById("request-form");
  if (!form || !window.fetch) return;
  var errorBox = document.getElementById("form-error");

  function showError(message) {
    // The API names JSON fields; the form has one field of tags.
    errorBox.textContent = message.replace(/Field 'versions\[\d+\]\.ref'/g, "Tag");
    errorBox.hidden = false;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var erl = form.elements.erl_version.value;
    var refs = form.elements.refs.value.split(/[\s,]+/).filter(Boolean);
    var body = {
      full_name: form.elements.full_name.value.trim(),
      clone_url: form.elements.clone_url.value.trim(),
      versions: refs.map(function (ref) { return erl ? {ref: ref, erl_version: erl} : {ref: ref}; }),
      notify_email: form.elements.notify_email.checked
    };
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    fetch("/buildAsync", {
      method: "POST",
      headers: {"Content-Type": "application/json", "Accept": "application/json"},
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.json().then(function (answer) {
        if (!response.ok || !answer.result) throw new Error(answer.response || ("HTTP " + response.status));
        var builds = answer.response;
        window.location.href = builds.length === 1
          ? "/ui/builds/" + builds[0].build_id
          : "/ui/packages/" + body.full_name;
      });
    }).catch(function (error) {
      showError(error.message);
      button.disabled = false;
    });
  });
})();
