// Follows a running build's log: reads GET /build_log?...&follow=1 as it streams,
// then reloads the page for the final status. Without JavaScript the page refreshes
// itself every few seconds instead (a <noscript> meta refresh).
(function () {
  "use strict";
  var log = document.getElementById("log");
  if (!log || !log.dataset.follow || !window.fetch || !window.TextDecoder) return;
  var statusEl = document.getElementById("status");
  var decoder = new TextDecoder();
  var started = false;

  function nearBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  }

  function append(text) {
    var stick = nearBottom();
    if (!started) { log.textContent = ""; started = true; }
    log.textContent += text;
    if (text.indexOf("[enot-builder] build ") !== -1 && statusEl) {
      statusEl.textContent = "running";
      statusEl.className = "status status-running";
    }
    if (stick) log.scrollTop = log.scrollHeight;
  }

  function pump(reader) {
    return reader.read().then(function (chunk) {
      if (chunk.done) {
        append(decoder.decode());
        window.location.reload();
        return;
      }
      append(decoder.decode(chunk.value, {stream: true}));
      return pump(reader);
    });
  }

  fetch(log.dataset.follow, {cache: "no-store"}).then(function (response) {
    if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
    return pump(response.body.getReader());
  }).catch(function () {
    setTimeout(function () { window.location.reload(); }, 5000);
  });
})();
