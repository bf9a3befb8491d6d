// WebLLM's examples/simple-chat-ts/src/gh-config.js (c51c9c0), the app-config the example's build aliases, on
// webllm_py: only the import changed.
import { prebuiltAppConfig } from "../webllm_py.js";

export default {
  model_list: prebuiltAppConfig.model_list,
  use_web_worker: true,
};
