// mnistlab draw page: draw with pointer events, POST the drawing (56 x 56 PNG) to /predict while drawing,
// show the digit, a bar per class and the 28 x 28 image the server's preprocessing produced.
"use strict";

const THROTTLE_MS = 100;   // at most one prediction per 100 ms while drawing
const SEND_SIDE = 56;      // the drawing is sent at 56 x 56: twice the model's input, 1/25 of the canvas's pixels
const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const seen = document.getElementById("seen");
const seenCtx = seen.getContext("2d");
const predictionEl = document.getElementById("prediction");
const confidenceEl = document.getElementById("confidence");
const statusEl = document.getElementById("status");
const barsEl = document.getElementById("bars");

let drawing = false, last = null, inked = false;
let timer = null, inFlight = false, again = false;
let generation = 0;         // bumped by Clear: answers to older drawings are dropped

const bars = [];
for (let d = 0; d < 10; d++) {
  const li = document.createElement("li");
  li.dataset.digit = String(d);
  li.innerHTML = `<span>${d}</span><span class="track"><span class="fill"></span></span><span class="pct">–</span>`;
  barsEl.appendChild(li);
  bars.push(li);
}

function setState(state) {
  document.body.dataset.state = state;
  document.body.dataset.settled = String(!drawing && !timer && !inFlight && !again);
}

function clearPad() {
  generation += 1;
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  inked = false;
  if (timer) { clearTimeout(timer); timer = null; }
  again = false;
  predictionEl.textContent = "?";
  delete predictionEl.dataset.digit;
  confidenceEl.textContent = "";
  for (const li of bars) {
    li.classList.remove("best");
    li.querySelector(".fill").style.width = "0";
    li.querySelector(".pct").textContent = "–";
  }
  seenCtx.clearRect(0, 0, seen.width, seen.height);
  statusEl.textContent = "Draw one digit, large, in the middle.";
  setState("idle");
}

function point(event) {
  const box = pad.getBoundingClientRect();
  return { x: (event.clientX - box.left) * pad.width / box.width,
           y: (event.clientY - box.top) * pad.height / box.height };
}

function stroke(from, to) {
  ctx.strokeStyle = "#000";
  ctx.lineWidth = pad.width / 12;   // about MNIST's stroke width relative to the digit
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(from.x, from.y);
  ctx.lineTo(to.x, to.y);
  ctx.stroke();
  inked = true;
}

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  drawing = true;
  last = point(event);
  stroke(last, last);
  schedule();
});

pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const e of events.length ? events : [event]) {
    const p = point(e);
    stroke(last, p);
    last = p;
  }
  schedule();
});

function endStroke() {
  if (!drawing) return;
  drawing = false;
  schedule();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);
document.getElementById("clear").addEventListener("click", clearPad);

function schedule() {
  if (!timer) timer = setTimeout(() => { timer = null; send(); }, THROTTLE_MS);
  setState(document.body.dataset.state === "idle" ? "drawing" : document.body.dataset.state);
}

const small = document.createElement("canvas");
small.width = small.height = SEND_SIDE;
const smallCtx = small.getContext("2d");

function canvasPng() {
  // Area-smoothed downscale: the server's preprocessing shrinks the digit to 20 px anyway, and a
  // small PNG is several times cheaper to decode and normalise than the 280 x 280 canvas.
  smallCtx.imageSmoothingEnabled = true;
  smallCtx.imageSmoothingQuality = "high";
  smallCtx.drawImage(pad, 0, 0, SEND_SIDE, SEND_SIDE);
  return new Promise((resolve) => small.toBlob(resolve, "image/png"));
}

async function send() {
  if (!inked) { setState("idle"); return; }
  if (inFlight) { again = true; setState(document.body.dataset.state); return; }
  inFlight = true;
  const mine = generation;
  setState(document.body.dataset.state);
  try {
    const body = await canvasPng();
    const response = await fetch("/predict", { method: "POST", headers: { "Content-Type": "image/png" }, body });
    const answer = await response.json().catch(() => ({}));  // a refusal from the HTTP layer may not be JSON
    if (mine === generation) {
      if (response.ok) show(answer); else showError(answer.error || `HTTP ${response.status}`);
    }
  } catch (error) {
    if (mine === generation) showError(`cannot reach the server (${error})`);
  } finally {
    inFlight = false;
    if (again) { again = false; send(); } else { setState(document.body.dataset.state); }
  }
}

function show(answer) {
  // Unsure (the top digit below 80 %, or the runner-up close): say "4 or 9?", not a confident digit.
  predictionEl.textContent = answer.unsure ? `${answer.candidates.join(" or ")}?` : String(answer.digit);
  predictionEl.dataset.digit = String(answer.digit);
  predictionEl.dataset.unsure = String(Boolean(answer.unsure));
  confidenceEl.textContent = answer.unsure
    ? answer.top.slice(0, 2).map((t) => `${t.digit}: ${(100 * t.probability).toFixed(1)}%`).join(", ")
    : `${(100 * answer.probability).toFixed(1)}%`;
  answer.probabilities.forEach((p, d) => {
    bars[d].classList.toggle("best", d === answer.digit);
    bars[d].querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
    bars[d].querySelector(".pct").textContent = `${(100 * p).toFixed(1)}%`;
  });
  const pixels = seenCtx.createImageData(28, 28);
  answer.seen.forEach((g, i) => {
    pixels.data.set([g, g, g, 255], 4 * i);
  });
  seenCtx.putImageData(pixels, 0, 0);
  statusEl.textContent = "";
  setState("shown");
}

function showError(message) {
  predictionEl.textContent = "?";
  delete predictionEl.dataset.digit;
  confidenceEl.textContent = "";
  statusEl.textContent = message;
  setState("error");
}

fetch("/model").then((r) => r.json()).then((m) => {
  const accuracy = typeof m.test_accuracy === "number" ? `, test accuracy ${(100 * m.test_accuracy).toFixed(2)}%` : "";
  document.getElementById("model").textContent = `model: ${m.name} (${m.format}${accuracy})`;
}).catch(() => { document.getElementById("model").textContent = "model: unknown"; });

clearPad();
