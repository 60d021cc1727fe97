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

  // Each attempt starts with "[enot-builder] build …"; one that will be retried ends
  // with "… FAILED, retrying in …": after that the build waits in the queue again.
  function showStatus() {
    var text = log.textContent;
    var attempt = text.lastIndexOf("[enot-builder] build ");
    if (attempt === -1 || !statusEl) return;
    var status = text.lastIndexOf(" FAILED, retrying in ") > attempt ? "queued" : "running";
    statusEl.textContent = status;
    statusEl.className = "status status-" + status;
  }

  function append(text) {
    var stick = nearBottom();
    if (!started) { log.textContent = ""; started = true; }
    log.textContent += text;
    showStatus();
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
