// Sends the build request form to POST /ui/request asking for JSON, shows each
// field's error next to its field (the same checks and messages as without
// JavaScript, where the server renders them), and opens the build page.
(function () {
  "use strict";
  var form = document.getElementById("request-form");
  if (!form || !window.fetch || !window.FormData) return;
  var FORM_ERROR = "form";

  // Where the server's page puts a field's error: right after the field.
  function errorElement(field) {
    var input = form.elements[field];
    if (field === FORM_ERROR || !input) return document.getElementById(FORM_ERROR + "-error");
    var element = document.createElement("p");
    element.className = "field-error";
    element.id = field + "-error";
    input.insertAdjacentElement("afterend", element);
    return element;
  }

  function clearErrors() {
    Array.prototype.forEach.call(form.querySelectorAll(".field-error"), function (element) {
      element.remove();
    });
    Array.prototype.forEach.call(form.querySelectorAll("[aria-invalid]"), function (input) {
      input.removeAttribute("aria-invalid");
      input.removeAttribute("aria-describedby");
    });
    var box = document.getElementById(FORM_ERROR + "-error");
    box.textContent = "";
    box.hidden = true;
  }

  function showErrors(errors) {
    var first = null;
    Object.keys(errors).forEach(function (field) {
      var element = errorElement(field);
      element.textContent = errors[field];
      element.hidden = false;
      var input = field === FORM_ERROR ? null : form.elements[field];
      if (input && input.setAttribute) {
        input.setAttribute("aria-invalid", "true");
        input.setAttribute("aria-describedby", element.id);
        first = first || input;
      }
    });
    if (first) first.focus();
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    fetch(form.action, {
      method: "POST",
      headers: {"Accept": "application/json"},
      body: new URLSearchParams(new FormData(form))
    }).then(function (response) {
      var type = response.headers.get("Content-Type") || "";
      if (type.indexOf("application/json") !== 0) {
        throw new Error("The server answered HTTP " + response.status + "; try again");
      }
      return response.json().then(function (answer) {
        clearErrors();
        if (response.ok && answer.result) {
          window.location.href = answer.response.location;
          return;
        }
        showErrors(answer.errors || {form: answer.response});
        button.disabled = false;
      });
    }).catch(function (error) {
      clearErrors();
      showErrors({form: error.message});
      button.disabled = false;
    });
  });
})();
