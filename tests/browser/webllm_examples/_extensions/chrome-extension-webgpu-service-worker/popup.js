// WebLLM's examples/chrome-extension-webgpu-service-worker/src/popup.ts (mlc-ai/web-llm c51c9c0), on webllm_py:
// .ts -> .js and TypeScript types removed, the imports changed (@mlc-ai/web-llm -> ./webllm_py.js, progressbar.js
// -> a stand-in, the CSS import dropped: the page links it), the model id (Qwen2-0.5B-Instruct-q4f16_1-MLC -> the
// harness's tiny model), and max_tokens: 4 added to the request (it runs until the model stops otherwise).
"use strict";

// This code is partially adapted from the openai-chatgpt-chrome-extension repo:
// https://github.com/jessedi0n/openai-chatgpt-chrome-extension

import { CreateExtensionServiceWorkerMLCEngine } from "./webllm_py.js";
import { Line } from "./progressbar.js";

/***************** UI elements *****************/
// Whether or not to use the content from the active tab as the context
const useContext = false;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const queryInput = document.getElementById("query-input");
const submitButton = document.getElementById("submit-button");

let isLoadingParams = false;

submitButton.disabled = true;

const progressBar = new Line("#loadingContainer", {
  strokeWidth: 4,
  easing: "easeInOut",
  duration: 1400,
  color: "#ffd166",
  trailColor: "#eee",
  trailWidth: 1,
  svgStyle: { width: "100%", height: "100%" },
});

/***************** Web-LLM MLCEngine Configuration *****************/
const initProgressCallback = (report) => {
  progressBar.animate(report.progress, {
    duration: 50,
  });
  if (report.progress == 1.0) {
    enableInputs();
  }
};

const engine = await CreateExtensionServiceWorkerMLCEngine(
  "tiny-llama-chat",
  { initProgressCallback: initProgressCallback },
);
const chatHistory = [];

isLoadingParams = true;

function enableInputs() {
  if (isLoadingParams) {
    sleep(500);
    submitButton.disabled = false;
    const loadingBarContainer = document.getElementById("loadingContainer");
    loadingBarContainer.remove();
    queryInput.focus();
    isLoadingParams = false;
  }
}

/***************** Event Listeners *****************/

// Disable submit button if input field is empty
queryInput.addEventListener("keyup", () => {
  if (queryInput.value === "") {
    submitButton.disabled = true;
  } else {
    submitButton.disabled = false;
  }
});

// If user presses enter, click submit button
queryInput.addEventListener("keyup", (event) => {
  if (event.code === "Enter") {
    event.preventDefault();
    submitButton.click();
  }
});

// Listen for clicks on submit button
async function handleClick() {
  // Get the message from the input field
  const message = queryInput.value;
  console.log("message", message);
  chatHistory.push({ role: "user", content: message });

  // Clear the answer
  document.getElementById("answer").innerHTML = "";
  // Hide the answer
  document.getElementById("answerWrapper").style.display = "none";
  // Show the loading indicator
  document.getElementById("loading-indicator").style.display = "block";

  // Send the chat completion message to the engine
  let curMessage = "";
  const completion = await engine.chat.completions.create({
    stream: true,
    messages: chatHistory,
    max_tokens: 4,
  });

  // Update the answer as the model generates more text
  for await (const chunk of completion) {
    const curDelta = chunk.choices[0].delta.content;
    if (curDelta) {
      curMessage += curDelta;
    }
    updateAnswer(curMessage);
  }
  chatHistory.push({ role: "assistant", content: await engine.getMessage() });
}

submitButton.addEventListener("click", handleClick);

function updateAnswer(answer) {
  // Show answer
  document.getElementById("answerWrapper").style.display = "block";
  const answerWithBreaks = answer.replace(/\n/g, "<br>");
  document.getElementById("answer").innerHTML = answerWithBreaks;
  // Add event listener to copy button
  document.getElementById("copyAnswer").addEventListener("click", () => {
    // Get the answer text
    const answerText = answer;
    // Copy the answer text to the clipboard
    navigator.clipboard
      .writeText(answerText)
      .then(() => console.log("Answer text copied to clipboard"))
      .catch((err) => console.error("Could not copy text: ", err));
  });
  const options = {
    month: "short",
    day: "2-digit",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  };
  const time = new Date().toLocaleString("en-US", options);
  // Update timestamp
  document.getElementById("timestamp").innerText = time;
  // Hide loading indicator
  document.getElementById("loading-indicator").style.display = "none";
}

function fetchPageContents() {
  chrome.tabs.query({ currentWindow: true, active: true }, function (tabs) {
    if (tabs[0]?.id) {
      const port = chrome.tabs.connect(tabs[0].id, { name: "channelName" });
      port.postMessage({});
      port.onMessage.addListener(function (msg) {
        console.log("Page contents:", msg.contents);
        chrome.runtime.sendMessage({ context: msg.contents });
      });
    }
  });
}

// Grab the page contents when the popup is opened
window.onload = function () {
  if (useContext) {
    fetchPageContents();
  }
};
