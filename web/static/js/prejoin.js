// Giao Ban — local camera and microphone: the pre-join device check.
//
// LocalMedia opens the chosen camera and microphone, shows the preview, fills the device
// pickers (enumerateDevices) and measures the microphone level with a WebAudio AnalyserNode.
// The same tracks are published when the person joins, so the check carries over.

import { t, setText, onLangChange } from "./i18n.js";

const CAMERA_KEY = "giaoban.camera";
const MIC_KEY = "giaoban.mic";
export const OFF = "off";

const VIDEO_CONSTRAINTS = {
  width: { ideal: 960 },
  height: { ideal: 540 },
  frameRate: { ideal: 25, max: 30 },
};
const AUDIO_CONSTRAINTS = {
  echoCancellation: true,
  noiseSuppression: true,
  autoGainControl: true,
};

/** The i18n key that explains a getUserMedia / getDisplayMedia failure. */
export function mediaErrorKey(err) {
  switch (err && err.name) {
    case "NotAllowedError":
    case "PermissionDeniedError":
      return "error.media_denied";
    case "NotFoundError":
    case "DevicesNotFoundError":
      return "error.media_not_found";
    case "NotReadableError":
    case "TrackStartError":
    case "AbortError":
      return "error.media_busy";
    case "OverconstrainedError":
    case "ConstraintNotSatisfiedError":
      return "error.media_constraints";
    case "SecurityError":
    case "InsecureContext":
      return "error.media_insecure";
    case "NotSupported":
    case "NotSupportedError":
    case "TypeError":
      return "error.media_unsupported";
    default:
      return "error.media_other";
  }
}

function storageGet(key) {
  try {
    return localStorage.getItem(key) || "";
  } catch {
    return "";
  }
}

function storageSet(key, value) {
  try {
    localStorage.setItem(key, value);
  } catch {
    /* storage may be disabled */
  }
}

export class LocalMedia {
  /**
   * @param {object} els
   * @param {HTMLVideoElement} els.preview
   * @param {HTMLSelectElement} els.cameraSelect
   * @param {HTMLSelectElement} els.micSelect
   * @param {HTMLElement} els.level        element whose `value` and `data-level` show the level
   * @param {HTMLElement} [els.placeholder] shown over the preview when there is no picture
   * @param {HTMLElement} [els.placeholderText]
   * @param {HTMLElement} [els.error]      where media errors are written
   */
  constructor(els) {
    this.els = els;
    this.audioTrack = null;
    this.videoTrack = null;
    this.level = 0;
    this.onLevel = null; // (level 0..1) => void
    this.onTracksChanged = null; // () => void
    this._audio = null; // {ctx, source, analyser, buffer, timer}
    this._errors = {}; // kind -> i18n key
    this._busy = Promise.resolve();
    this.supported = !!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
    this._unlock = () => this._resumeAudio();
    onLangChange(() => this.refreshDevices());
  }

  /** Open the preferred devices (remembered from last time), fill the pickers, start the meter. */
  async start() {
    this.els.cameraSelect.addEventListener("change", () => this.setDevice("video", this.els.cameraSelect.value));
    this.els.micSelect.addEventListener("change", () => this.setDevice("audio", this.els.micSelect.value));
    document.addEventListener("pointerdown", this._unlock, { capture: true });
    document.addEventListener("keydown", this._unlock, { capture: true });
    if (!this.supported) {
      this._errors.video = this._errors.audio = window.isSecureContext ? "error.media_unsupported" : "error.media_insecure";
      this._render();
      await this.refreshDevices();
      return;
    }
    navigator.mediaDevices.addEventListener?.("devicechange", () => this.refreshDevices());
    const cam = storageGet(CAMERA_KEY);
    const mic = storageGet(MIC_KEY);
    const wantVideo = cam !== OFF;
    const wantAudio = mic !== OFF;
    if (wantVideo && wantAudio) {
      // One prompt for both when possible.
      try {
        const stream = await this._getUserMedia({
          video: this._constraints("video", cam),
          audio: this._constraints("audio", mic),
        });
        this._setTrack("video", stream.getVideoTracks()[0] || null);
        this._setTrack("audio", stream.getAudioTracks()[0] || null);
      } catch {
        await this._openKind("video", cam);
        await this._openKind("audio", mic);
      }
    } else {
      if (wantVideo) await this._openKind("video", cam);
      if (wantAudio) await this._openKind("audio", mic);
    }
    this._render();
    await this.refreshDevices();
  }

  /** Tracks to publish on the "main" connection: [{track, source}]. */
  publishTracks() {
    const out = [];
    if (this.audioTrack) out.push({ track: this.audioTrack, source: "microphone" });
    if (this.videoTrack) out.push({ track: this.videoTrack, source: "camera" });
    return out;
  }

  /** Switch the camera ("video") or microphone ("audio") to `deviceId` (or OFF). */
  setDevice(kind, deviceId) {
    this._busy = this._busy.then(async () => {
      storageSet(kind === "video" ? CAMERA_KEY : MIC_KEY, deviceId);
      this._setTrack(kind, null);
      if (deviceId !== OFF) await this._openKind(kind, deviceId);
      else delete this._errors[kind];
      this._render();
      await this.refreshDevices();
      if (this.onTracksChanged) this.onTracksChanged();
    });
    return this._busy;
  }

  /** Open a device of `kind` when there is none (for example the camera button in the meeting). */
  async ensure(kind) {
    const current = kind === "video" ? this.videoTrack : this.audioTrack;
    if (current && current.readyState === "live") return current;
    const stored = storageGet(kind === "video" ? CAMERA_KEY : MIC_KEY);
    const track = await this._openKind(kind, stored === OFF ? "" : stored, { throwErrors: true });
    storageSet(kind === "video" ? CAMERA_KEY : MIC_KEY, track.getSettings().deviceId || "");
    this._render();
    await this.refreshDevices();
    return track;
  }

  /** Stop every local track and the meter (after leaving). */
  stopAll() {
    this._setTrack("video", null);
    this._setTrack("audio", null);
    this._stopMeter();
    document.removeEventListener("pointerdown", this._unlock, { capture: true });
    document.removeEventListener("keydown", this._unlock, { capture: true });
  }

  /** Re-read the device list into the two pickers. */
  async refreshDevices() {
    let devices = [];
    if (this.supported && navigator.mediaDevices.enumerateDevices) {
      try {
        devices = await navigator.mediaDevices.enumerateDevices();
      } catch {
        devices = [];
      }
    }
    this._fillSelect(
      this.els.cameraSelect,
      devices.filter((d) => d.kind === "videoinput" && d.deviceId),
      this.videoTrack,
      "prejoin.camera_n",
      "prejoin.camera_off",
    );
    this._fillSelect(
      this.els.micSelect,
      devices.filter((d) => d.kind === "audioinput" && d.deviceId),
      this.audioTrack,
      "prejoin.mic_n",
      "prejoin.mic_off",
    );
  }

  // -------------------------------------------------------------- internals

  _constraints(kind, deviceId) {
    const base = kind === "video" ? { ...VIDEO_CONSTRAINTS } : { ...AUDIO_CONSTRAINTS };
    if (deviceId && deviceId !== OFF) base.deviceId = { exact: deviceId };
    return base;
  }

  async _getUserMedia(constraints) {
    return navigator.mediaDevices.getUserMedia(constraints);
  }

  async _openKind(kind, deviceId, { throwErrors = false } = {}) {
    let stream = null;
    try {
      stream = await this._getUserMedia({ [kind]: this._constraints(kind, deviceId) });
    } catch (err) {
      const retry = deviceId && deviceId !== OFF && ["OverconstrainedError", "NotFoundError"].includes(err.name);
      if (retry) {
        try {
          stream = await this._getUserMedia({ [kind]: this._constraints(kind, "") });
        } catch (err2) {
          this._errors[kind] = mediaErrorKey(err2);
          if (throwErrors) throw err2;
        }
      } else {
        this._errors[kind] = mediaErrorKey(err);
        if (throwErrors) throw err;
      }
    }
    if (!stream) return null;
    delete this._errors[kind];
    const track = (kind === "video" ? stream.getVideoTracks() : stream.getAudioTracks())[0] || null;
    this._setTrack(kind, track);
    return track;
  }

  _setTrack(kind, track) {
    const old = kind === "video" ? this.videoTrack : this.audioTrack;
    if (old && old !== track) old.stop();
    if (kind === "video") {
      this.videoTrack = track;
      if (track) track.contentHint = "motion";
    } else {
      this.audioTrack = track;
      this._stopMeter();
      if (track) this._startMeter(track);
    }
    if (track) {
      track.addEventListener("ended", () => {
        if ((kind === "video" ? this.videoTrack : this.audioTrack) === track) {
          this._errors[kind] = "error.media_ended";
          this._render();
        }
      });
    }
  }

  _render() {
    const { preview, placeholder, placeholderText, error } = this.els;
    if (this.videoTrack) {
      const stream = new MediaStream([this.videoTrack]);
      preview.muted = true;
      preview.srcObject = stream;
      preview.play().catch(() => {});
    } else {
      preview.srcObject = null;
    }
    if (placeholder) placeholder.hidden = !!this.videoTrack;
    if (placeholderText) {
      setText(placeholderText, this._errors.video ? this._errors.video : "prejoin.camera_is_off");
    }
    if (error) {
      const keys = [...new Set([this._errors.video, this._errors.audio].filter(Boolean))];
      error.hidden = keys.length === 0;
      error.textContent = keys.map((key) => t(key)).join(" ");
    }
  }

  _fillSelect(select, devices, track, unnamedKey, offKey) {
    const doc = select.ownerDocument;
    const options = [];
    const selectedId = track ? track.getSettings().deviceId || "" : OFF;
    if (track && !devices.some((d) => d.deviceId === selectedId)) {
      // The open device is not listed (yet): still show it as the choice.
      devices = [{ deviceId: selectedId, label: track.label }, ...devices];
    }
    devices.forEach((device, index) => {
      const option = doc.createElement("option");
      option.value = device.deviceId;
      if (device.label) option.textContent = device.label;
      else setText(option, unnamedKey, { n: index + 1 });
      options.push(option);
    });
    const off = doc.createElement("option");
    off.value = OFF;
    setText(off, offKey);
    options.push(off);
    select.replaceChildren(...options);
    select.value = selectedId;
  }

  // -------------------------------------------------------------- level meter

  _startMeter(track) {
    const AudioContextClass = window.AudioContext || window.webkitAudioContext;
    if (!AudioContextClass) return;
    try {
      const ctx = new AudioContextClass();
      const source = ctx.createMediaStreamSource(new MediaStream([track]));
      const analyser = ctx.createAnalyser();
      analyser.fftSize = 1024;
      analyser.smoothingTimeConstant = 0.3;
      source.connect(analyser);
      const buffer = new Float32Array(analyser.fftSize);
      const timer = setInterval(() => this._measure(), 100);
      this._audio = { ctx, source, analyser, buffer, timer, track };
      this._resumeAudio();
    } catch (err) {
      console.warn("giaoban: no audio level meter", err);
    }
  }

  _resumeAudio() {
    const ctx = this._audio?.ctx;
    if (ctx && ctx.state === "suspended") ctx.resume().catch(() => {});
  }

  _measure() {
    const audio = this._audio;
    if (!audio) return;
    let level = 0;
    if (audio.track.enabled && audio.track.readyState === "live") {
      audio.analyser.getFloatTimeDomainData(audio.buffer);
      let sum = 0;
      for (const sample of audio.buffer) sum += sample * sample;
      const rms = Math.sqrt(sum / audio.buffer.length);
      const db = rms > 0 ? 20 * Math.log10(rms) : -100;
      level = Math.max(0, Math.min(1, (db + 60) / 55)); // -60 dBFS .. -5 dBFS -> 0..1
    }
    // Fast attack, slow release: easier to read.
    this.level = level >= this.level ? level : Math.max(level, this.level * 0.7);
    const shown = Math.round(this.level * 100) / 100;
    const el = this.els.level;
    if (el) {
      if ("value" in el) el.value = shown;
      el.dataset.level = String(shown);
    }
    if (this.onLevel) this.onLevel(shown);
  }

  _stopMeter() {
    const audio = this._audio;
    if (!audio) return;
    this._audio = null;
    clearInterval(audio.timer);
    try {
      audio.source.disconnect();
    } catch {
      /* already disconnected */
    }
    audio.ctx.close().catch(() => {});
    this.level = 0;
    if (this.els.level) {
      if ("value" in this.els.level) this.els.level.value = 0;
      this.els.level.dataset.level = "0";
    }
    if (this.onLevel) this.onLevel(0);
  }
}
