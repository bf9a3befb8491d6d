// A stand-in for the parts of LangChain.js that WebLLM's embeddings example uses (bundler dependencies:
// langchain/vectorstores/memory, langchain/util/document, @langchain/core/prompts and /runnables), written for this
// harness: an in-memory vector store ranked by cosine similarity, a {placeholder} prompt template, and the two
// runnables the RAG chain is made of.

const cosine = (a, b) => {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / Math.sqrt(na * nb);
};

const asRunnable = (f) => ({ invoke: f, pipe: (next) => asRunnable(async (x) => callStep(next, await f(x))) });

async function callStep(step, input) {
  if (typeof step === "function") return step(input);
  if (step && typeof step.invoke === "function") return step.invoke(input);
  const out = {}; // a map of steps, each given the same input
  for (const [key, value] of Object.entries(step)) out[key] = await callStep(value, input);
  return out;
}

export class MemoryVectorStore {
  constructor(embeddings) {
    this.embeddings = embeddings;
    this.vectors = []; // {content, embedding, metadata}
  }

  static async fromExistingIndex(embeddings) {
    return new MemoryVectorStore(embeddings);
  }

  static async fromTexts(texts, metadatas, embeddings) {
    const store = new MemoryVectorStore(embeddings);
    await store.addDocuments(texts.map((pageContent, i) => ({ pageContent, metadata: metadatas[i] ?? {} })));
    return store;
  }

  async addDocuments(documents) {
    const embedded = await this.embeddings.embedDocuments(documents.map((d) => d.pageContent));
    documents.forEach((d, i) => this.vectors.push({ content: d.pageContent, embedding: embedded[i], metadata: d.metadata }));
  }

  similarity(a, b) {
    return cosine(a, b);
  }

  async similaritySearch(query, k = 4) {
    const q = await this.embeddings.embedQuery(query);
    return this.vectors
      .map((v) => ({ v, score: cosine(q, v.embedding) }))
      .sort((x, y) => y.score - x.score)
      .slice(0, k)
      .map(({ v }) => ({ pageContent: v.content, metadata: v.metadata }));
  }

  asRetriever(k = 4) {
    return asRunnable((query) => this.similaritySearch(query, k));
  }
}

export const formatDocumentsAsString = (documents) => documents.map((d) => d.pageContent).join("\n\n");

export class PromptTemplate {
  constructor(template) {
    this.template = template;
  }

  static fromTemplate(template) {
    return new PromptTemplate(template);
  }

  async invoke(values) {
    return this.template.replace(/\{(\w+)\}/g, (_, key) => String(values[key] ?? ""));
  }
}

export class RunnablePassthrough {
  invoke(input) {
    return input;
  }
}

export const RunnableSequence = {
  from: (steps) => asRunnable(async (input) => {
    let value = input;
    for (const step of steps) value = await callStep(step, value);
    return value;
  }),
};
