// A stand-in for WebLLM's examples/next-simple-chat/src/utils/chat_component.tsx (mlc-ai/web-llm c51c9c0), which is
// a React component (React and Next.js are the example's bundler dependencies): the same buttons, input and
// handlers over the same ChatUI and `new MLCEngine()`, with the messages kept in a plain array and drawn with DOM
// calls instead of React state. Written for this harness.
import { MLCEngine } from "../webllm_py.js";
import ChatUI from "./chat_ui.js";

export function ChatComponent(root) {
  let messages = [];
  let prompt = "";
  const chat_ui = new ChatUI(new MLCEngine());
  const chat = root.querySelector("#chatui-chat");
  const info = root.querySelector("#chatui-info-label");
  const render = () => {
    chat.replaceChildren(
      ...messages.map((value) => {
        const div = document.createElement("div");
        div.className = `msg ${value.kind}-msg`;
        div.textContent = value.text;
        return div;
      }),
    );
  };
  const setMessages = (next) => {
    messages = next;
    render();
  };
  const setRuntimeStats = (runtimeStats) => (info.textContent = runtimeStats);
  const updateMessage = (kind, text, append) => {
    if (kind == "init") {
      text = "[System Initalize] " + text;
    }
    const msgCopy = [...messages];
    if (msgCopy.length == 0 || append) {
      setMessages([...msgCopy, { kind, text }]);
    } else {
      msgCopy[msgCopy.length - 1] = { kind, text };
      setMessages([...msgCopy]);
    }
  };
  root.querySelector("#download").onclick = () => {
    chat_ui.asyncInitChat(updateMessage).catch((error) => {
      console.log(error);
    });
  };
  const input = root.querySelector("#chatui-input");
  input.oninput = (event) => (prompt = event.target.value);
  input.onkeydown = (event) => {
    if (event.key === "Enter") {
      chat_ui.onGenerate(prompt, updateMessage, setRuntimeStats).catch((error) => console.log(error));
    }
  };
  root.querySelector("#send").onclick = () => {
    chat_ui.onGenerate(prompt, updateMessage, setRuntimeStats).catch((error) => console.log(error));
  };
  root.querySelector("#reset").onclick = () => {
    chat_ui
      .onReset(() => {
        setMessages([]);
      })
      .catch((error) => console.log(error));
  };
}
