// shared by search.html and eval.html: DOM building (text goes through textContent, never innerHTML),
// file URLs, JSON requests whose errors carry the server's message, and the explanation image.
"use strict";
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value; else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value); else node.setAttribute(key, value);
  }
  for (const child of children) node.appendChild(child);
  return node;
}

const fileUrl = (kind, path) => `/${kind}/` + path.split("/").map(encodeURIComponent).join("/");

async function getJson(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({error: `HTTP ${response.status}`}));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

// the attention maps PNG at `url` under `caption` in `box`, or the server's message when it refuses
function showExplanation(box, url, caption) {
  const image = el("img", {src: url, alt: caption});
  image.addEventListener("error", async () => {
    const response = await fetch(url);
    const body = await response.json().catch(() => ({error: `HTTP ${response.status}`}));
    box.replaceChildren(el("p", {class: "error", text: body.error}));
  });
  box.replaceChildren(el("div", {class: "note", text: caption}), image);
}
