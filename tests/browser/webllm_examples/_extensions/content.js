// WebLLM's examples/chrome-extension*/src/content.js (c51c9c0): hands the page's text to the popup that asks.
chrome.runtime.onConnect.addListener(function (port) {
  port.onMessage.addListener(function () {
    port.postMessage({ contents: document.body.innerText });
  });
});
