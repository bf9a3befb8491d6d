// A stand-in for progressbar.js's Line (a bundler dependency of WebLLM's chrome-extension examples), written for
// this harness: a bar whose width follows animate(fraction).
export class Line {
  constructor(selector, options = {}) {
    this.container = document.querySelector(selector);
    this.bar = document.createElement("div");
    this.bar.style.cssText = `height: 4px; width: 0; background: ${options.color || "#ffd166"}`;
    this.container?.appendChild(this.bar);
  }

  animate(fraction) {
    this.bar.style.width = `${Math.round(Math.max(0, Math.min(1, fraction)) * 100)}%`;
  }
}
