// A stand-in for the part of @sinclair/typebox that WebLLM's json-schema example uses (a bundler dependency):
// Type.* build JSON Schema objects as TypeBox's do (an Enum is an anyOf of consts). Written for this harness.
const object = (properties) => ({ type: "object", properties, required: Object.keys(properties) });

export const Type = {
  Object: object,
  String: () => ({ type: "string" }),
  Number: () => ({ type: "number" }),
  Integer: () => ({ type: "integer" }),
  Boolean: () => ({ type: "boolean" }),
  Any: () => ({}),
  Array: (items) => ({ type: "array", items }),
  Enum: (values) => ({ anyOf: Object.values(values).map((v) => ({ type: "string", const: v })) }),
};
