// A recording's waveform on a <canvas>, kept in step with an <audio> element.
//
// `peaks` is the server's precomputed waveform: min/max pairs flattened
// ([min0, max0, min1, max1, ...], integers in [-1000, 1000]). The part already
// played is drawn in the accent colour. A click (or a tap) seeks there; the canvas
// is also a keyboard slider: arrows ±5 s, Page Up/Down ±30 s, Home/End.

const PEAK_SCALE = 1000;

export class Waveform {
  /**
   * @param {HTMLCanvasElement} canvas  drawn at its CSS size × devicePixelRatio
   * @param {HTMLAudioElement} audio    the player it shows and seeks
   * @param {number[]} peaks            flattened min/max pairs (may be empty)
   * @param {number} durationS          the recording's length in seconds (the server's
   *                                    measure, used until the audio knows its own)
   */
  constructor(canvas, audio, peaks, durationS) {
    this.canvas = canvas;
    this.audio = audio;
    this.peaks = Array.isArray(peaks) ? peaks : [];
    this.durationS = Number(durationS) || 0;
    this.frame = 0;
    canvas.addEventListener("click", (event) => this.seekToEvent(event));
    canvas.addEventListener("keydown", (event) => this.onKey(event));
    for (const name of ["timeupdate", "seeked", "loadedmetadata", "durationchange", "play", "pause", "ended"]) {
      audio.addEventListener(name, () => this.draw());
    }
    audio.addEventListener("play", () => this.animate());
    new ResizeObserver(() => this.draw()).observe(canvas);
    this.draw();
  }

  /** Length in seconds: the audio's own once known and finite, else the server's. */
  duration() {
    const own = this.audio.duration;
    return Number.isFinite(own) && own > 0 ? own : this.durationS;
  }

  /** Seek to `seconds` (clamped to the recording). */
  seek(seconds) {
    const duration = this.duration();
    if (!duration) return;
    this.audio.currentTime = Math.min(Math.max(0, seconds), Math.max(0, duration - 0.05));
    this.draw();
  }

  seekToEvent(event) {
    const box = this.canvas.getBoundingClientRect();
    if (!box.width) return;
    const fraction = Math.min(Math.max(0, (event.clientX - box.left) / box.width), 1);
    this.seek(fraction * this.duration());
  }

  onKey(event) {
    const now = this.audio.currentTime;
    const steps = { ArrowLeft: -5, ArrowDown: -5, ArrowRight: 5, ArrowUp: 5, PageDown: -30, PageUp: 30 };
    if (event.key in steps) this.seek(now + steps[event.key]);
    else if (event.key === "Home") this.seek(0);
    else if (event.key === "End") this.seek(this.duration());
    else return;
    event.preventDefault();
  }

  animate() {
    cancelAnimationFrame(this.frame);
    const step = () => {
      this.draw();
      if (!this.audio.paused) this.frame = requestAnimationFrame(step);
    };
    this.frame = requestAnimationFrame(step);
  }

  draw() {
    const { canvas } = this;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const ctx = canvas.getContext("2d");
    const style = getComputedStyle(canvas);
    const played = style.getPropertyValue("--wave-played").trim() || "#b4400e";
    const rest = style.getPropertyValue("--wave-rest").trim() || "#9a8d82";
    ctx.clearRect(0, 0, width, height);

    const duration = this.duration();
    const progress = duration ? Math.min(1, this.audio.currentTime / duration) : 0;
    const playedX = progress * width;
    const pairs = Math.floor(this.peaks.length / 2);
    const middle = height / 2;
    // Normalise to the loudest peak, so quiet recordings still show their shape.
    let loudest = 1;
    for (const value of this.peaks) loudest = Math.max(loudest, Math.abs(value));
    const scale = (middle - ratio) / Math.min(PEAK_SCALE, loudest);
    const bar = Math.max(1, Math.round(ratio));
    for (let x = 0; x < width; x += bar) {
      let low = 0;
      let high = 0;
      if (pairs) {
        // Every peak pair that falls under this column of pixels.
        const first = Math.floor((x / width) * pairs);
        const last = Math.max(first, Math.floor(((x + bar) / width) * pairs) - 1);
        low = Infinity;
        high = -Infinity;
        for (let i = first; i <= Math.min(last, pairs - 1); i++) {
          low = Math.min(low, this.peaks[2 * i]);
          high = Math.max(high, this.peaks[2 * i + 1]);
        }
      }
      const top = middle - Math.max(high, 0) * scale;
      const bottom = middle - Math.min(low, 0) * scale;
      ctx.fillStyle = x < playedX ? played : rest;
      ctx.fillRect(x, top, bar, Math.max(bar, bottom - top));
    }
    // The playhead.
    ctx.fillStyle = played;
    ctx.fillRect(Math.min(playedX, width - bar), 0, bar, height);

    canvas.setAttribute("aria-valuemax", String(Math.round(duration)));
    canvas.setAttribute("aria-valuenow", String(Math.round(this.audio.currentTime || 0)));
    canvas.setAttribute("aria-valuetext", `${Math.round(this.audio.currentTime || 0)} of ${Math.round(duration)} seconds`);
  }
}
