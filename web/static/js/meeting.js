// Giao Ban — the meeting page: pre-join check, then the meeting (video grid, controls,
// participant list, connection state). Protocol work is done by MeetingClient (protocol.js).

import { MeetingClient } from "./protocol.js";
import { t, has, setText, onLangChange } from "./i18n.js";
import { LocalMedia, mediaErrorKey } from "./prejoin.js";
import { setupChat } from "./chat.js";

const NAME_KEY = "giaoban.name";
const SIDE_KEY = "giaoban.side";
const CAMERA_SOURCES = new Set(["camera", "microphone"]);
const SCREEN_SOURCES = new Set(["screen", "screen-audio"]);

const $ = (id) => document.getElementById(id);
const body = document.body;
const ROOM = body.dataset.room;
// From an invitation link; a signed-in browser joins with its session cookie instead.
const TOKEN = body.dataset.token || null;
const HOST_ROLES = new Set(["host", "cohost"]);

const ui = {
  prejoin: $("prejoin"),
  meeting: $("meeting"),
  left: $("left"),
  lobby: $("lobby"),
  lobbyLeave: $("lobby-leave"),
  lobbyPanel: $("lobby-panel"),
  lobbyList: $("lobby-list"),
  lobbyCount: $("lobby-count"),
  toggleLock: $("toggle-lock"),
  toggleRecording: $("toggle-recording"),
  recIndicator: $("rec-indicator"),
  endAll: $("end-all"),
  raiseHand: $("raise-hand"),
  muteAll: $("mute-all"),
  handsPanel: $("hands-panel"),
  handsList: $("hands-list"),
  handsCount: $("hands-count"),
  floorHolder: $("floor-holder"),
  revokeFloor: $("revoke-floor"),
  leftHeading: document.querySelector("#left h1"),
  joinForm: $("prejoin-form"),
  joinButton: $("join"),
  joinError: $("join-error"),
  displayName: $("display-name"),
  connState: $("conn-state"),
  connLabel: document.querySelector("#conn-state .conn-label"),
  banner: $("banner"),
  mainArea: $("main-area"),
  grid: $("grid"),
  gridEmpty: $("grid-empty"),
  screens: $("screens"),
  selfView: $("self-view"),
  selfVideo: $("self-video"),
  sharingNote: $("sharing-note"),
  participants: $("participants"),
  participantCount: $("participant-count"),
  participantBadge: $("participant-badge"),
  side: $("side"),
  toggleMic: $("toggle-mic"),
  toggleCam: $("toggle-cam"),
  shareScreen: $("share-screen"),
  stopShare: $("stop-share"),
  toggleSide: $("toggle-participants"),
  closeSide: $("close-side"),
  leave: $("leave"),
  rejoin: $("rejoin"),
  copyLink: $("copy-link"),
  toasts: $("toasts"),
};

const client = new MeetingClient();
window.giaoban = { client };

const media = new LocalMedia({
  preview: $("preview"),
  cameraSelect: $("camera-select"),
  micSelect: $("mic-select"),
  level: $("mic-level"),
  placeholder: $("preview-placeholder"),
  placeholderText: $("preview-message"),
  error: $("media-error"),
});

/** Remote participants shown: id -> {id, name, tile, video, nameEl, avatar, li, tracks, media}. */
const remotes = new Map();
let stage = "prejoin";
let screenShare = null; // {tracks: MediaStreamTrack[]} while we share
let speakerId = null;
let soundBlocked = false;

// ---------------------------------------------------------------- helpers

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function icon(name, extraClass = "") {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", `icon ${extraClass}`.trim());
  svg.setAttribute("aria-hidden", "true");
  const use = document.createElementNS(ns, "use");
  use.setAttribute("href", `#i-${name}`);
  svg.append(use);
  return svg;
}

function initials(name) {
  const words = (name || "?").trim().split(/\s+/).filter(Boolean);
  const letters = words.length > 1 ? words[0][0] + words[words.length - 1][0] : (words[0] || "?").slice(0, 2);
  return letters.toUpperCase();
}

function hue(id) {
  let h = 0;
  for (const ch of String(id)) h = (h * 31 + ch.charCodeAt(0)) % 360;
  return h;
}

function nameLength(text) {
  return [...text].length;
}

/** A sentence for the person: the error in the current language, never a raw code. */
function errorText(err, action) {
  let key;
  if (err && typeof err.code === "string") {
    if (action && has(`error.${action}.${err.code}`)) key = `error.${action}.${err.code}`;
    else if (has(`error.${err.code}`)) key = `error.${err.code}`;
    else key = "error.unknown";
  } else if (err && err.name) {
    key = mediaErrorKey(err);
  } else {
    key = "error.unknown";
  }
  const message = t(key);
  if (action && has(`action.${action}`)) return t("error.with_action", { action: t(`action.${action}`), message });
  return message;
}

function toast(text, { kind = "error", timeout = 8000, button = null } = {}) {
  const box = el("div", { class: `toast toast-${kind}`, role: kind === "error" ? "alert" : "status" }, [
    el("span", { class: "toast-text", text }),
  ]);
  if (button) box.append(button);
  const close = el("button", { type: "button", class: "btn btn-ghost btn-icon toast-close", "aria-label": t("app.close") }, [
    icon("close"),
  ]);
  close.addEventListener("click", () => box.remove());
  box.append(close);
  ui.toasts.append(box);
  while (ui.toasts.children.length > 4) ui.toasts.firstElementChild.remove();
  if (timeout) setTimeout(() => box.remove(), timeout);
  return box;
}

function setStage(next) {
  stage = next;
  body.dataset.stage = next;
  ui.prejoin.hidden = next !== "prejoin";
  ui.meeting.hidden = next !== "meeting";
  ui.left.hidden = next !== "left";
  ui.lobby.hidden = next !== "lobby";
  if (next === "meeting") requestAnimationFrame(layoutGrid);
}

// ---------------------------------------------------------------- video elements

function playVideo(video) {
  const attempt = video.play();
  if (!attempt) return;
  attempt.catch((err) => {
    if (err && err.name === "NotAllowedError" && !video.muted) {
      // Autoplay with sound refused (no click on this page yet): play muted, offer sound.
      video.muted = true;
      video.dataset.soundBlocked = "true";
      video.play().catch(() => {});
      offerSound();
    }
  });
}

function offerSound() {
  if (soundBlocked) return;
  soundBlocked = true;
  const button = el("button", { type: "button", class: "btn btn-small btn-primary" });
  setText(button, "meeting.enable_sound");
  const box = toast(t("meeting.sound_blocked"), { kind: "info", timeout: 0, button });
  button.addEventListener("click", () => {
    for (const video of document.querySelectorAll("video[data-sound-blocked]")) {
      video.muted = false;
      delete video.dataset.soundBlocked;
      video.play().catch(() => {});
    }
    soundBlocked = false;
    box.remove();
  });
}

/** Show `tracks` in `video` (a new MediaStream only when the set of tracks changed). */
function setVideoTracks(video, tracks) {
  const current = video.srcObject ? video.srcObject.getTracks() : [];
  const same = current.length === tracks.length && tracks.every((track) => current.includes(track));
  if (same) return;
  video.srcObject = tracks.length ? new MediaStream(tracks) : null;
  if (tracks.length) playVideo(video);
}

// ---------------------------------------------------------------- remote participants

function ensureRemote(participantId, name) {
  let remote = remotes.get(participantId);
  if (remote) {
    if (name && name !== remote.name) {
      remote.name = name;
      renderRemote(remote);
    }
    return remote;
  }
  const video = el("video", { autoplay: true, playsinline: true });
  video.autoplay = true;
  video.playsInline = true;
  const avatar = el("div", { class: "avatar", "aria-hidden": "true" });
  const nameEl = el("span", { class: "tile-name-text" });
  const tile = el(
    "div",
    {
      class: "tile",
      dataset: { participantId, micMuted: "false", camMuted: "false", hasVideo: "false" },
    },
    [video, avatar, el("span", { class: "tile-name" }, [icon("mic-off", "mic-off-icon"), nameEl])],
  );
  const liName = el("span", { class: "p-name" });
  const liRole = el("span", { class: "p-role" });
  const hostMenu = el("details", { class: "p-menu", hidden: true });
  const li = el("li", { dataset: { participantId } }, [
    el("span", { class: "avatar avatar-small", "aria-hidden": "true" }),
    liName,
    liRole,
    el("span", { class: "p-icons" }, [icon("mic-off", "mic-off-icon"), icon("cam-off", "cam-off-icon")]),
    hostMenu,
  ]);
  remote = {
    id: participantId,
    name: name || "",
    tile,
    video,
    avatar,
    nameEl,
    li,
    liName,
    liRole,
    hostMenu,
    tracks: new Map(), // track id -> Track
    media: new Map(), // track id -> MediaStreamTrack
    screen: null, // {box, video}
  };
  remotes.set(participantId, remote);
  ui.grid.append(tile);
  ui.participants.append(li);
  renderRemote(remote);
  updateCounts();
  layoutGrid();
  return remote;
}

function removeRemote(participantId) {
  const remote = remotes.get(participantId);
  if (!remote) return;
  remotes.delete(participantId);
  remote.video.srcObject = null;
  remote.tile.remove();
  remote.li.remove();
  if (remote.screen) {
    remote.screen.video.srcObject = null;
    remote.screen.box.remove();
    remote.screen = null;
  }
  if (speakerId === participantId) speakerId = null;
  updateCounts();
  updateScreens();
  layoutGrid();
}

function trackOf(remote, source) {
  for (const track of remote.tracks.values()) if (track.source === source) return track;
  return null;
}

function renderRemote(remote) {
  const name = remote.name || t("meeting.unnamed");
  remote.nameEl.textContent = name;
  remote.liName.textContent = name;
  remote.tile.title = name;
  for (const avatar of [remote.avatar, remote.li.querySelector(".avatar")]) {
    avatar.textContent = initials(name);
    avatar.style.setProperty("--hue", hue(remote.id));
  }
  const mic = trackOf(remote, "microphone");
  const cam = trackOf(remote, "camera");
  const micMuted = !!(mic && mic.muted);
  const camMuted = !!(cam && cam.muted);
  for (const node of [remote.tile, remote.li]) {
    node.dataset.micMuted = String(micMuted);
    node.dataset.camMuted = String(camMuted);
    node.dataset.hasMic = String(!!mic);
    node.dataset.hasCam = String(!!cam);
  }
  const camMedia = cam ? remote.media.get(cam.id) : null;
  const showsVideo = !!(camMedia && camMedia.readyState === "live" && !camMuted && !camMedia.muted);
  remote.tile.dataset.hasVideo = String(showsVideo);
  remote.tile.classList.toggle("speaking", speakerId === remote.id);
  remote.li.classList.toggle("speaking", speakerId === remote.id);
  const info = client.participants.get(remote.id) || {};
  const role = info.role || "member";
  remote.li.dataset.role = role;
  remote.liRole.textContent = role !== "member" && has(`role.${role}`) ? t(`role.${role}`) : "";
  remote.tile.dataset.spotlight = String(client.roomInfo?.spotlight === remote.id);
  renderHostMenu(remote, role);
}

/** The host's actions on one participant, in a small menu in the participant list. */
function renderHostMenu(remote, role) {
  const menu = remote.hostMenu;
  menu.hidden = !isHost();
  if (menu.hidden) {
    menu.replaceChildren();
    return;
  }
  const spotlighted = client.roomInfo?.spotlight === remote.id;
  const actions = [
    ["mute", "host.mute", () => client.muteParticipant(remote.id)],
    ["ask_unmute", "host.ask_unmute", () => client.askUnmute(remote.id)],
    ["stop_camera", "host.stop_camera", () => client.stopCamera(remote.id)],
    ["grant_floor", "floor.grant", () => client.grantFloor(remote.id)],
    ["spotlight", spotlighted ? "host.unspotlight" : "host.spotlight", () => client.spotlight(spotlighted ? null : remote.id)],
  ];
  if (role === "member" || role === "guest") actions.push(["set_role", "host.make_cohost", () => client.setRole(remote.id, "cohost")]);
  if (role === "cohost") actions.push(["set_role", "host.make_member", () => client.setRole(remote.id, "member")]);
  actions.push([
    "remove",
    "host.remove",
    () => (window.confirm(t("host.remove_confirm", { name: remote.name })) ? client.remove(remote.id) : null),
  ]);
  const wasOpen = menu.open;
  menu.replaceChildren(
    el("summary", { "aria-label": t("host.actions"), title: t("host.actions"), text: "⋯" }),
    ...actions.map(([action, key, run]) => {
      const button = el("button", { type: "button", class: "btn btn-small", "data-action": action, text: t(key) });
      button.addEventListener("click", () => hostAction(action, button, run));
      return button;
    }),
  );
  menu.open = wasOpen;
}

async function hostAction(action, button, run) {
  button.disabled = true;
  try {
    await run();
  } catch (err) {
    toast(errorText(err, action));
  } finally {
    button.disabled = false;
  }
}

function refreshMedia(remote) {
  const cameraTracks = [];
  const screenTracks = [];
  for (const [trackId, mst] of remote.media) {
    const info = remote.tracks.get(trackId);
    const source = info ? info.source : mst.kind === "video" ? "camera" : "microphone";
    if (SCREEN_SOURCES.has(source)) screenTracks.push(mst);
    else if (CAMERA_SOURCES.has(source)) cameraTracks.push(mst);
  }
  setVideoTracks(remote.video, cameraTracks);
  const hasScreenVideo = screenTracks.some((track) => track.kind === "video");
  if (hasScreenVideo && !remote.screen) {
    const video = el("video", { autoplay: true, playsinline: true });
    const label = el("span", { class: "tile-name" });
    const box = el("div", { class: "screen-tile", dataset: { participantId: remote.id } }, [video, label]);
    remote.screen = { box, video, label };
    ui.screens.append(box);
  }
  if (remote.screen) {
    if (!hasScreenVideo) {
      remote.screen.video.srcObject = null;
      remote.screen.box.remove();
      remote.screen = null;
    } else {
      setVideoTracks(remote.screen.video, screenTracks);
      remote.screen.label.textContent = t("meeting.screen_of", { name: remote.name || t("meeting.unnamed") });
    }
  }
  updateScreens();
  renderRemote(remote);
}

function updateScreens() {
  const presenting = ui.screens.children.length > 0;
  ui.screens.hidden = !presenting;
  ui.mainArea.classList.toggle("presenting", presenting);
  ui.screens.dataset.count = String(ui.screens.children.length);
  layoutGrid();
}

function updateCounts() {
  const count = remotes.size + 1;
  ui.participantCount.textContent = String(count);
  ui.participantBadge.textContent = String(count);
  ui.gridEmpty.hidden = remotes.size > 0;
}

/** Size the tiles so that all of them fit the grid area at 16:9 without scrolling. */
function layoutGrid() {
  const n = ui.grid.children.length;
  ui.grid.dataset.count = String(n);
  if (!n || ui.mainArea.classList.contains("presenting")) {
    ui.grid.style.removeProperty("--tile-w");
    return;
  }
  const gap = 8;
  const width = ui.grid.clientWidth;
  const height = ui.grid.clientHeight;
  if (!width || !height) return;
  let best = 0;
  for (let cols = 1; cols <= n; cols += 1) {
    const rows = Math.ceil(n / cols);
    let w = (width - gap * (cols - 1)) / cols;
    let h = (w * 9) / 16;
    if (h * rows + gap * (rows - 1) > height) {
      h = (height - gap * (rows - 1)) / rows;
      w = (h * 16) / 9;
    }
    if (w > best) best = w;
  }
  ui.grid.style.setProperty("--tile-w", `${Math.max(120, Math.floor(best))}px`);
}

// ---------------------------------------------------------------- self view and list

let selfLi = null;

function renderSelf() {
  const name = client.name || ui.displayName.value.trim();
  if (!selfLi) {
    selfLi = el("li", { class: "self" }, [
      el("span", { class: "avatar avatar-small", "aria-hidden": "true" }),
      el("span", { class: "p-name" }),
      el("span", { class: "p-you" }),
      el("span", { class: "p-icons" }, [icon("mic-off", "mic-off-icon"), icon("cam-off", "cam-off-icon")]),
    ]);
    ui.participants.prepend(selfLi);
  }
  if (client.participantId) selfLi.dataset.participantId = client.participantId;
  selfLi.querySelector(".p-name").textContent = name;
  setText(selfLi.querySelector(".p-you"), "meeting.you_suffix");
  const selfAvatar = ui.selfView.querySelector(".avatar");
  for (const avatar of [selfAvatar, selfLi.querySelector(".avatar")]) {
    avatar.textContent = initials(name);
    avatar.style.setProperty("--hue", hue(client.participantId || name));
  }
  const micMuted = !media.audioTrack || client.isMuted("microphone") === true;
  const camMuted = !media.videoTrack || client.isMuted("camera") === true;
  for (const node of [ui.selfView, selfLi]) {
    node.dataset.micMuted = String(micMuted);
    node.dataset.camMuted = String(camMuted);
  }
  ui.selfView.dataset.hasVideo = String(!!media.videoTrack && !camMuted);
  if (media.videoTrack) setVideoTracks(ui.selfVideo, [media.videoTrack]);
  else ui.selfVideo.srcObject = null;
  const speaking = speakerId !== null && speakerId === client.participantId;
  ui.selfView.classList.toggle("speaking", speaking);
  selfLi.classList.toggle("speaking", speaking);
  renderControls();
}

function renderControls() {
  const micMuted = !media.audioTrack || client.isMuted("microphone") === true;
  const camMuted = !media.videoTrack || client.isMuted("camera") === true;
  ui.toggleMic.setAttribute("aria-pressed", String(micMuted));
  ui.toggleCam.setAttribute("aria-pressed", String(camMuted));
  ui.shareScreen.setAttribute("aria-pressed", String(!!screenShare));
  setText(ui.shareScreen.querySelector(".ctrl-label"), screenShare ? "meeting.stop_share" : "meeting.share");
  ui.sharingNote.hidden = !screenShare;
  ui.toggleSide.setAttribute("aria-pressed", String(body.dataset.side === "open"));
}

function setSpeaker(participantId) {
  speakerId = participantId;
  for (const remote of remotes.values()) {
    const on = remote.id === participantId;
    remote.tile.classList.toggle("speaking", on);
    remote.li.classList.toggle("speaking", on);
  }
  const self = participantId !== null && participantId === client.participantId;
  ui.selfView.classList.toggle("speaking", self);
  if (selfLi) selfLi.classList.toggle("speaking", self);
}

function renderState(state) {
  ui.connState.dataset.state = state;
  setText(ui.connLabel, `state.${state}`);
  ui.banner.hidden = !(stage === "meeting" && state === "reconnecting");
  body.dataset.connState = state;
}

function setSide(open) {
  body.dataset.side = open ? "open" : "closed";
  try {
    localStorage.setItem(SIDE_KEY, open ? "open" : "closed");
  } catch {
    /* storage may be disabled */
  }
  renderControls();
  requestAnimationFrame(layoutGrid);
}

// ---------------------------------------------------------------- client events

client.on("state", ({ state }) => renderState(state));

client.on("joined", ({ participants }) => {
  for (const p of participants) ensureRemote(p.id, p.name);
  if (stage !== "meeting") setStage("meeting");
  renderSelf();
  updateCounts();
  renderHostTools();
});

client.on("lobby", () => setStage("lobby"));

client.on("lobbyupdated", ({ waiting }) => renderLobby(waiting));

client.on("roomupdated", () => renderHostTools());

client.on("removed", () => {
  setText(ui.leftHeading, "left.removed_heading");
  ui.rejoin.hidden = true;
  endMeeting();
});

client.on("ended", () => {
  setText(ui.leftHeading, "left.ended_heading");
  ui.rejoin.hidden = true;
  endMeeting();
});

client.on("participantjoined", ({ participant }) => {
  ensureRemote(participant.id, participant.name);
});

client.on("participantupdated", ({ participant }) => {
  renderRemote(ensureRemote(participant.id, participant.name));
});

client.on("mutedbyhost", ({ sources, reason }) => {
  renderSelf();
  renderControls();
  if (sources.includes("camera")) toast(t("host.stopped_camera"), { kind: "info" });
  if (sources.includes("microphone")) toast(t(reason === "floor" ? "host.floor_closed" : "host.muted_you"), { kind: "info" });
});

client.on("unmuterequested", () => {
  const button = el("button", { type: "button", class: "btn btn-small", text: t("host.unmute_now") });
  const box = toast(t("host.asks_unmute"), { kind: "info", timeout: 0, button });
  button.addEventListener("click", async () => {
    box.remove();
    await unmuteMicrophone();
  });
});

client.on("floorgranted", () => {
  const button = el("button", { type: "button", class: "btn btn-small", text: t("host.unmute_now") });
  const box = toast(t("floor.granted"), { kind: "info", timeout: 0, button });
  button.addEventListener("click", async () => {
    box.remove();
    await unmuteMicrophone();
  });
});

client.on("handsupdated", () => renderHands());

client.on("rolechanged", ({ role }) => {
  toast(t(role === "cohost" ? "host.now_cohost" : "host.now_member"), { kind: "info" });
  renderHostTools();
});

client.on("participantleft", ({ participantId }) => removeRemote(participantId));

client.on("trackadded", ({ track }) => {
  const remote = ensureRemote(track.participant_id, client.participants.get(track.participant_id)?.name);
  remote.tracks.set(track.id, track);
  refreshMedia(remote);
});

client.on("trackupdated", ({ track }) => {
  const remote = remotes.get(track.participant_id);
  if (!remote) return;
  remote.tracks.set(track.id, track);
  renderRemote(remote);
});

client.on("trackremoved", ({ track_id: trackId, participant_id: participantId }) => {
  const remote = remotes.get(participantId);
  if (!remote) return;
  remote.tracks.delete(trackId);
  remote.media.delete(trackId);
  refreshMedia(remote);
});

client.on("remotetrack", (detail) => {
  const mst = detail.mediaStreamTrack;
  // The node may move an m-line (and so this MediaStreamTrack) to another track: detach it.
  for (const other of remotes.values()) {
    for (const [trackId, existing] of other.media) {
      if (existing === mst && trackId !== detail.track_id) {
        other.media.delete(trackId);
        refreshMedia(other);
      }
    }
  }
  const remote = ensureRemote(detail.participant_id, client.participants.get(detail.participant_id)?.name);
  if (detail.track && !remote.tracks.has(detail.track_id)) remote.tracks.set(detail.track_id, detail.track);
  remote.media.set(detail.track_id, mst);
  if (!mst.giaobanWatched) {
    mst.giaobanWatched = true;
    const rerender = () => {
      for (const r of remotes.values()) if ([...r.media.values()].includes(mst)) renderRemote(r);
    };
    mst.addEventListener("mute", rerender);
    mst.addEventListener("unmute", rerender);
    mst.addEventListener("ended", rerender);
  }
  refreshMedia(remote);
});

client.on("remotetrackended", ({ track_id: trackId }) => {
  for (const remote of remotes.values()) {
    if (remote.media.delete(trackId)) refreshMedia(remote);
  }
});

client.on("activespeaker", ({ participantId }) => setSpeaker(participantId));

client.on("localmute", () => renderSelf());

client.on("error", ({ error, action, fatal, pc }) => {
  console.warn("giaoban:", action, error);
  if (!fatal) return; // retried automatically; the connection state shows it
  if (action === "join" && error.code === "wrong_node" && /^https?:\/\//.test(error.url || "")) {
    // The meeting runs on another node (it started there meanwhile): continue there.
    window.location.assign(error.url + window.location.search);
    return;
  }
  if (action === "join" && stage === "lobby") setStage("prejoin"); // onJoin shows why
  if (action === "join" && stage === "prejoin") return; // shown next to the join button
  const what = action === "publish" && pc === "screen" ? "share" : action;
  toast(errorText(error, what));
  if (action === "join" && stage === "meeting") {
    // The node refuses us back in (for example the room is closed): stop here.
    endMeeting();
  }
});

// ---------------------------------------------------------------- host tools

const isHost = () => HOST_ROLES.has(client.role);
const announced = new Set(); // lobby entries already announced with a toast

function waitedText(since) {
  const minutes = Math.max(0, Math.floor((Date.now() / 1000 - since) / 60));
  return t("host.waiting_for", { minutes });
}

function renderLobby(waiting) {
  const host = isHost();
  ui.lobbyPanel.hidden = !host || waiting.length === 0;
  ui.lobbyCount.textContent = String(waiting.length);
  ui.lobbyList.replaceChildren(
    ...waiting.map((entry) => {
      const admit = el("button", { type: "button", class: "btn btn-small btn-primary", "data-action": "admit", text: t("host.admit") });
      const deny = el("button", { type: "button", class: "btn btn-small", "data-action": "deny", text: t("host.deny") });
      admit.addEventListener("click", () => lobbyAction("admit", entry.id, admit));
      deny.addEventListener("click", () => lobbyAction("deny", entry.id, deny));
      return el("li", { class: "lobby-entry", "data-entry-id": entry.id }, [
        el("span", { class: "p-name", text: entry.name }),
        el("span", { class: "muted lobby-meta", text: [entry.site, waitedText(entry.since)].filter(Boolean).join(" · ") }),
        el("span", { class: "lobby-actions" }, [admit, deny]),
      ]);
    }),
  );
  if (!host) return;
  for (const entry of waiting) {
    if (announced.has(entry.id)) continue;
    announced.add(entry.id);
    const open = el("button", { type: "button", class: "btn btn-small", text: t("host.show_lobby") });
    open.addEventListener("click", () => setSide(true));
    toast(t("host.knocking", { name: entry.name }), { kind: "info", button: open });
  }
}

async function lobbyAction(action, entryId, button) {
  button.disabled = true;
  try {
    if (action === "admit") await client.admit(entryId);
    else await client.deny(entryId);
  } catch (err) {
    button.disabled = false;
    toast(errorText(err, action));
  }
}

async function unmuteMicrophone() {
  try {
    await client.setMuted("microphone", false);
  } catch (err) {
    toast(errorText(err, "mute"));
  }
  renderSelf();
  renderControls();
}

function renderHands() {
  const queue = client.hands || [];
  const mine = queue.some((h) => h.participant_id === client.participantId);
  ui.raiseHand.setAttribute("aria-pressed", String(mine));
  setText(ui.raiseHand.querySelector(".ctrl-label"), mine ? "floor.lower" : "floor.raise");
  const host = isHost();
  const floor = client.roomInfo?.floor || null;
  ui.handsPanel.hidden = !host || (queue.length === 0 && !floor);
  ui.handsCount.textContent = String(queue.length);
  ui.revokeFloor.hidden = !floor;
  ui.floorHolder.hidden = !floor;
  if (floor) {
    const name = floor === client.participantId ? client.name : client.participants.get(floor)?.name || "";
    ui.floorHolder.textContent = t("floor.holder", { name });
  }
  ui.handsList.replaceChildren(
    ...queue.map((hand) => {
      const grant = el("button", { type: "button", class: "btn btn-small btn-primary", "data-action": "grant_floor", text: t("floor.grant") });
      grant.addEventListener("click", () => hostAction("grant_floor", grant, () => client.grantFloor(hand.participant_id)));
      return el("li", { class: "lobby-entry hand-entry", "data-participant-id": hand.participant_id }, [
        el("span", { class: "p-name", text: hand.name }),
        el("span", { class: "muted lobby-meta", text: waitedText(hand.since) }),
        el("span", { class: "lobby-actions" }, [grant]),
      ]);
    }),
  );
}

async function toggleHand() {
  const mine = (client.hands || []).some((h) => h.participant_id === client.participantId);
  ui.raiseHand.disabled = true;
  try {
    const res = mine ? await client.lowerHand() : await client.raiseHand();
    client.hands = res.queue || client.hands;
    renderHands();
  } catch (err) {
    toast(errorText(err));
  } finally {
    ui.raiseHand.disabled = false;
  }
}

function renderRecording() {
  const on = !!client.roomInfo?.recording;
  const paused = on && !!client.roomInfo?.recording_paused;
  ui.recIndicator.hidden = !on;
  // Paused: the recording goes on but nothing is written until its recorder is back.
  ui.recIndicator.dataset.paused = String(paused);
  ui.recIndicator.querySelector(".rec-on").hidden = paused;
  ui.recIndicator.querySelector(".rec-paused").hidden = !paused;
  body.dataset.recording = String(on);
  ui.toggleRecording.hidden = !isHost();
  ui.toggleRecording.setAttribute("aria-pressed", String(on));
  const key = on ? "recording.stop" : "recording.start";
  setText(ui.toggleRecording.querySelector(".ctrl-label"), key);
  ui.toggleRecording.setAttribute("aria-label", t(key));
  ui.toggleRecording.title = t(key);
}

async function toggleRecording() {
  ui.toggleRecording.disabled = true;
  try {
    const info = await client.setRecording(!client.roomInfo?.recording);
    client.roomInfo = { ...client.roomInfo, ...info };
    renderRecording();
  } catch (err) {
    toast(errorText(err, "recording"));
  } finally {
    ui.toggleRecording.disabled = false;
  }
}

function renderHostTools() {
  renderRecording();
  const host = isHost();
  ui.muteAll.hidden = !host;
  const locked = !!client.roomInfo?.locked;
  ui.toggleLock.hidden = !host;
  ui.endAll.hidden = !host;
  ui.toggleLock.setAttribute("aria-pressed", String(locked));
  const key = locked ? "host.unlock" : "host.lock";
  setText(ui.toggleLock.querySelector(".ctrl-label"), key);
  ui.toggleLock.setAttribute("aria-label", t(key));
  body.dataset.locked = String(locked);
  body.dataset.role = client.role || "";
  renderLobby(client.waiting);
  renderHands();
  for (const remote of remotes.values()) renderRemote(remote);
}

async function endForAll() {
  if (!window.confirm(t("host.end_confirm"))) return;
  ui.endAll.disabled = true;
  try {
    await client.endForAll();
  } catch (err) {
    toast(errorText(err, "end"));
  } finally {
    ui.endAll.disabled = false;
  }
}

async function toggleLock() {
  ui.toggleLock.disabled = true;
  try {
    const info = await client.setLocked(!client.roomInfo?.locked);
    client.roomInfo = { ...client.roomInfo, ...info };
    renderHostTools();
  } catch (err) {
    toast(errorText(err, "lock"));
  } finally {
    ui.toggleLock.disabled = false;
  }
}

// ---------------------------------------------------------------- pre-join

function prefillName() {
  if (ui.displayName.value.trim()) return;
  try {
    ui.displayName.value = localStorage.getItem(NAME_KEY) || "";
  } catch {
    /* storage may be disabled */
  }
}

function showJoinError(text) {
  ui.joinError.textContent = text;
  ui.joinError.hidden = !text;
}

async function onJoin(event) {
  event.preventDefault();
  showJoinError("");
  const name = ui.displayName.value.trim();
  if (!name) {
    showJoinError(t("start.error_name_empty"));
    ui.displayName.focus();
    return;
  }
  if (nameLength(name) > 64) {
    showJoinError(t("start.error_name_long"));
    ui.displayName.focus();
    return;
  }
  try {
    localStorage.setItem(NAME_KEY, name);
  } catch {
    /* storage may be disabled */
  }
  ui.joinButton.disabled = true;
  setText(ui.joinButton, "prejoin.joining");
  try {
    await media._busy; // a device switch in progress
    const tracks = media.publishTracks();
    if (tracks.length) await client.publish("main", tracks);
    await client.join(ROOM, name, { token: TOKEN });
  } catch (err) {
    // After the meeting stage was reached, the "error" handler has dealt with it.
    if ((err && err.code === "left") || stage !== "prejoin") return;
    showJoinError(errorText(err, "join"));
  } finally {
    ui.joinButton.disabled = false;
    setText(ui.joinButton, "prejoin.join");
  }
}

// Device switches in the check stage: hand the new tracks to the client.
media.onTracksChanged = async () => {
  if (stage !== "meeting") {
    const tracks = media.publishTracks();
    if (tracks.length) await client.publish("main", tracks).catch(() => {});
    else await client.unpublish("main").catch(() => {});
  }
};

media.onLevel = (level) => {
  ui.toggleMic.style.setProperty("--level", String(level));
};

// ---------------------------------------------------------------- meeting controls

async function toggleLocal(kind) {
  const source = kind === "audio" ? "microphone" : "camera";
  const button = kind === "audio" ? ui.toggleMic : ui.toggleCam;
  button.disabled = true;
  try {
    const current = kind === "audio" ? media.audioTrack : media.videoTrack;
    if (!current || current.readyState !== "live") {
      // No device yet (joined without it, or it was unplugged): open it and publish it.
      const track = await media.ensure(kind);
      await client.publish("main", media.publishTracks());
      await client.setMuted(source, false);
      track.enabled = true;
    } else {
      const muted = client.isMuted(source) !== true;
      await client.setMuted(source, muted);
    }
  } catch (err) {
    if (!(err && err.willRetry)) toast(errorText(err, err && err.code ? "mute" : undefined));
  } finally {
    button.disabled = false;
    renderSelf();
  }
}

async function startScreenShare() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getDisplayMedia) {
    toast(t("error.screen_unsupported"));
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getDisplayMedia({
      video: { frameRate: { ideal: 15, max: 30 } },
      audio: true,
    });
  } catch (err) {
    if (err && err.name === "NotAllowedError") return; // the person cancelled the picker
    toast(errorText(err, "share"));
    return;
  }
  const video = stream.getVideoTracks()[0];
  const audio = stream.getAudioTracks()[0];
  if (!video) {
    for (const track of stream.getTracks()) track.stop();
    return;
  }
  video.contentHint = "detail";
  const tracks = [{ track: video, source: "screen" }];
  if (audio) tracks.push({ track: audio, source: "screen-audio" });
  screenShare = { tracks: stream.getTracks() };
  video.addEventListener("ended", () => stopScreenShare()); // "Stop sharing" in the browser bar
  renderControls();
  try {
    await client.publish("screen", tracks);
  } catch (err) {
    if (err && err.willRetry) return; // the client rejoins and shares again
    toast(errorText(err, "share"));
    await stopScreenShare();
  }
}

async function stopScreenShare() {
  if (!screenShare) return;
  const share = screenShare;
  screenShare = null;
  for (const track of share.tracks) track.stop();
  renderControls();
  try {
    await client.unpublish("screen");
  } catch (err) {
    if (err && err.code !== "disconnected") toast(errorText(err, "share"));
  }
}

function endMeeting() {
  if (screenShare) {
    for (const track of screenShare.tracks) track.stop();
    screenShare = null;
  }
  for (const id of [...remotes.keys()]) removeRemote(id);
  media.stopAll();
  ui.selfVideo.srcObject = null;
  setStage("left");
}

async function onLeave() {
  ui.leave.disabled = true;
  try {
    await client.leave();
  } finally {
    ui.leave.disabled = false;
    endMeeting();
  }
}

async function copyLink() {
  const base = body.dataset.publicUrl || window.location.origin;
  const url = `${base.replace(/\/$/, "")}/r/${encodeURIComponent(ROOM)}`;
  try {
    await navigator.clipboard.writeText(url);
    toast(t("meeting.link_copied"), { kind: "info", timeout: 3000 });
  } catch {
    toast(t("meeting.link_is", { url }), { kind: "info", timeout: 15000 });
  }
}

// ---------------------------------------------------------------- wiring

function init() {
  prefillName();
  let side = "";
  try {
    side = localStorage.getItem(SIDE_KEY) || "";
  } catch {
    side = "";
  }
  body.dataset.side = side || (window.innerWidth >= 1000 ? "open" : "closed");
  renderState(client.state);
  renderControls();

  ui.joinForm.addEventListener("submit", onJoin);
  ui.toggleMic.addEventListener("click", () => toggleLocal("audio"));
  ui.toggleCam.addEventListener("click", () => toggleLocal("video"));
  ui.shareScreen.addEventListener("click", () => (screenShare ? stopScreenShare() : startScreenShare()));
  ui.stopShare.addEventListener("click", () => stopScreenShare());
  ui.toggleSide.addEventListener("click", () => setSide(body.dataset.side !== "open"));
  ui.closeSide.addEventListener("click", () => setSide(false));
  ui.leave.addEventListener("click", onLeave);
  ui.toggleLock.addEventListener("click", toggleLock);
  ui.toggleRecording.addEventListener("click", toggleRecording);
  ui.endAll.addEventListener("click", endForAll);
  ui.raiseHand.addEventListener("click", toggleHand);
  ui.muteAll.addEventListener("click", () => hostAction("mute_all", ui.muteAll, () => client.muteAll()));
  ui.revokeFloor.addEventListener("click", () => hostAction("revoke_floor", ui.revokeFloor, () => client.revokeFloor()));
  ui.lobbyLeave.addEventListener("click", async () => {
    await client.leave();
    setStage("prejoin");
  });
  ui.rejoin.addEventListener("click", () => window.location.reload());
  ui.copyLink.addEventListener("click", copyLink);
  window.addEventListener("pagehide", () => {
    if (client.state !== "disconnected") client.leave();
  });
  if (window.ResizeObserver) new ResizeObserver(() => layoutGrid()).observe(ui.grid);
  else window.addEventListener("resize", layoutGrid);

  onLangChange(() => {
    for (const remote of remotes.values()) refreshMedia(remote);
    if (selfLi) renderSelf();
    renderControls();
  });

  setStage("prejoin");
  media.start().catch((err) => console.error("giaoban: media", err));
  setupChat(client, { toast, errorText, setSide });
}

init();
