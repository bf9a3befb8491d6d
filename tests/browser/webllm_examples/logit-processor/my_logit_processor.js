// WebLLM's examples/logit-processor/src/my_logit_processor.ts (c51c9c0), on webllm_py: TypeScript types removed
// (its only import was for the LogitProcessor type).

// Define LogitProcessor
export class MyLogitProcessor {
  tokenSequence = [];

  processLogits(logits) {
    logits[0] = 100.0; // should be enough so that we always sample token 0 below
    return logits;
  }

  processSampledToken(token) {
    this.tokenSequence.push(token);
    console.log("processSampledToken: " + this.tokenSequence.length);
  }

  resetState() {
    this.tokenSequence = [];
    console.log("resetState");
  }
}
