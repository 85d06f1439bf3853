// Giao Ban — the browser side of the signaling protocol (signaling/PROTOCOL.md).
//
// No DOM code here: MeetingClient speaks Socket.IO to the node (namespace /meeting), owns the
// RTCPeerConnections (up: one per published "pc" name; down: one, offered by the node) and
// reports what happens through events. The UI lives in meeting.js.
//
// Events (CustomEvent, payload in `event.detail`):
//   state              {state, previous}      "connecting" | "connected" | "reconnecting" | "disconnected"
//   joined             {participantId, room, participants, rejoin, role}   after every (re)join ack
//   lobby              {entryId, title}       waiting for a host to admit us (then "joined")
//   lobbyupdated       {waiting}              hosts only: who waits in the lobby, oldest first
//   roomupdated        {room, title, mode, locked}
//   ended              {room}                 a host ended the meeting for everyone
//   removed            {room}                 a host removed us (we cannot come back)
//   mutedbyhost        {sources, reason, by}  the node stopped forwarding these sources of ours
//   unmuterequested    {by}                   a host asks us to open the microphone
//   floorgranted       {by}                   we may speak now (conference, training)
//   handsupdated       {queue}                raised hands in order [{participant_id, name, since}]
//   rolechanged        {role}                 a host made us co-host or member
//   participantjoined  {participant}          a remote participant (also when found on rejoin)
//   participantleft    {participantId}
//   participantupdated {participant}          name or track list changed (participant_updated)
//   trackadded         {track}                a remote Track
//   trackupdated       {track}                a remote Track whose mute state changed
//   trackremoved       {track_id, participant_id}
//   remotetrack        {track_id, participant_id, kind, source, mediaStreamTrack, mid, track}
//   remotetrackended   {track_id, mid}        the down connection no longer carries it
//   activespeaker      {participantId, level}
//   published          {pc, tracks}           an up connection was (re)negotiated; tracks are ours
//   localmute          {trackId, source, muted}
//   pcstate            {pc, state}            "main" | "screen" | ... | "down"
//   socketerror        {message}              a failed (re)connection attempt; retried by itself
//   error              {error, action, fatal} error.code is a protocol code, "timeout", ...
//   left               {}

import { io } from "/static/vendor/socket.io.esm.min.js";

export const NAMESPACE = "/meeting";
export const STATES = Object.freeze(["connecting", "connected", "reconnecting", "disconnected"]);
export const PC_NAME_RE = /^[a-z0-9_-]{1,16}$/;

// Errors that do not get better by trying again.
const FATAL_JOIN = new Set([
  "bad_request",
  "too_large",
  "forbidden",
  "not_found",
  "unauthenticated",
  "invalid_token",
  "room_ended",
  "room_locked",
  "denied",
  "wrong_node",
]);
const FATAL_PUBLISH = new Set(["bad_request", "too_large", "forbidden"]);

/** An error answered by the node (`code` is the protocol's stable code) or a local failure. */
export class ProtocolError extends Error {
  constructor(code, message, event) {
    super(message || code);
    this.name = "ProtocolError";
    this.code = code;
    this.event = event;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Exponential backoff with jitter: attempt 1 -> base/2..base, doubling up to max. */
export function backoffDelay(attempt, base = 1000, max = 15000) {
  const ceiling = Math.min(max, base * 2 ** Math.max(0, attempt - 1));
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
}

function defaultSource(kind) {
  return kind === "video" ? "camera" : "microphone";
}

function candidateInit(candidate) {
  if (!candidate || !candidate.candidate) return { candidate: "" }; // end of candidates
  const init = { candidate: candidate.candidate };
  if (candidate.sdpMid !== null && candidate.sdpMid !== undefined) init.sdpMid = candidate.sdpMid;
  if (candidate.sdpMLineIndex !== null && candidate.sdpMLineIndex !== undefined) {
    init.sdpMLineIndex = candidate.sdpMLineIndex;
  }
  return init;
}

export class MeetingClient extends EventTarget {
  /**
   * @param {object} [options]
   * @param {string} [options.url]            node origin; default: this page's origin
   * @param {string} [options.path]           Socket.IO path, default "/socket.io/"
   * @param {number} [options.ackTimeout]     ms to wait for every ack (10000)
   * @param {object} [options.socketOptions]  extra socket.io-client options
   * @param {number} [options.rejoinBaseDelay] first rejoin backoff step in ms (1000)
   * @param {number} [options.rejoinMaxDelay]  largest rejoin backoff in ms (15000)
   * @param {number} [options.pcConnectTimeout] ms a negotiated connection may take to connect (20000)
   * @param {number} [options.disconnectedGrace] ms a connection may stay "disconnected" (8000)
   */
  constructor(options = {}) {
    super();
    this.options = {
      url: undefined,
      path: "/socket.io/",
      ackTimeout: 10000,
      socketOptions: {},
      rejoinBaseDelay: 1000,
      rejoinMaxDelay: 15000,
      pcConnectTimeout: 20000,
      disconnectedGrace: 8000,
      ...options,
    };
    /** @type {import("/static/vendor/socket.io.esm.min.js").Socket | null} */
    this.socket = null;
    this.participantId = null;
    this.room = null;
    this.name = null;
    this.iceServers = [];
    this.state = "disconnected";
    /** Remote participants: id -> {id, name}. */
    this.participants = new Map();
    /** Remote tracks: track id -> Track (as the node describes it). */
    this.tracks = new Map();
    /** Remote media: track id -> MediaStreamTrack received on the down connection. */
    this.remoteTracks = new Map();
    /** Up connections: pc name -> RTCPeerConnection. */
    this.upPcs = new Map();
    /** The down connection (the node offers), or null. */
    this.downPc = null;

    // pc name -> {stream, entries: [{track, source, kind, muted, trackId, transceiver}]}
    this._local = new Map();
    this._wantJoined = false; // the user wants to be in the room
    this._joined = false; // the node has acknowledged our join in this session
    this._established = false; // join + publish + subscribe done in this session
    this._everJoined = false;
    this._gen = 0; // bumped whenever the session is torn down; stale async work checks it
    this._sessionGen = -1;
    this._attempt = 0;
    this._retryTimer = null;
    this._joinWaiter = null;
    this._epoch = null;
    this._meta = new WeakMap(); // RTCPeerConnection -> {key, ready, queue, timers, closed}
    this._downMids = new Map(); // mid -> track id (from the latest down_offer)
    this._announced = new Map(); // mid -> track id already reported as "remotetrack"
    this._pendingTracks = new Set(); // track ids seen in a down_offer before their Track
    this._downChain = Promise.resolve();
    this._upChains = new Map();
    this._recovering = new Set();
    this._pcFailures = new Map();
    this._ownIds = new Set(); // every participant id this client has had (ghosts after a rejoin)
    this.token = null; // invitation token, when the page came from an invitation link
    this.role = null; // our role in the room: "host", "cohost", "member" or "guest"
    this.roomInfo = null; // {room, title, mode, locked}
    this.waiting = []; // hosts: the lobby, oldest first
    this.inLobby = false;
    this._ticket = null; // given on entry; a rejoin that shows it skips the lobby
    this._admission = null; // {resolve, reject} while waiting in the lobby
    this._serverListeners = []; // [event, fn] added with onServer()
    this.hands = []; // raised hands, in order
  }

  // ------------------------------------------------------------------ public API

  /** True once the node acknowledged the join of the current session. */
  get joined() {
    return this._joined;
  }

  /** The local tracks and their state, for the UI. */
  localTracks() {
    const out = [];
    for (const [pc, local] of this._local) {
      for (const e of local.entries) {
        out.push({ pc, source: e.source, kind: e.kind, track: e.track, trackId: e.trackId, muted: e.muted });
      }
    }
    return out;
  }

  /**
   * Join `room` as `name`. Connects the socket, joins, publishes every local track set with
   * publish() and subscribes. Resolves after the first complete join; rejects only on errors
   * that retrying cannot fix (bad room/name, forbidden, ...). Transient failures (no answer,
   * socket down) are retried with backoff, visible through the "state" event.
   * `token` is the invitation token of an invitation link (a signed-in browser needs none).
   */
  join(room, name, { token = null } = {}) {
    if (this._wantJoined) return Promise.reject(new ProtocolError("already_joined", "join() already called", "join"));
    this.room = room;
    this.name = name;
    this.token = token;
    this._wantJoined = true;
    this._everJoined = false;
    this._attempt = 0;
    const promise = new Promise((resolve, reject) => {
      this._joinWaiter = { resolve, reject };
    });
    this._ensureSocket();
    this._updateState();
    if (this.socket.connected) {
      this._teardown();
      this._scheduleSession(0);
    } else {
      this.socket.connect();
    }
    return promise;
  }

  /**
   * Publish `tracks` ([{track, source}]) on the up connection `pcName` ("main": camera and
   * microphone, "screen": a screen share). Before join() it only records them (join publishes
   * them); after, it negotiates at once (a second call with the same name renegotiates).
   * The tracks are re-published automatically after every rejoin.
   * Resolves with the node's Track list (or null when not joined yet). A thrown error with
   * `willRetry` set is being handled by a rejoin; otherwise the tracks were dropped.
   */
  async publish(pcName, tracks) {
    if (!PC_NAME_RE.test(pcName)) throw new ProtocolError("bad_request", `bad pc name ${pcName}`, "publish");
    const prev = this._local.get(pcName);
    const entries = tracks
      .filter((item) => item && item.track)
      .map(({ track, source }) => {
        const src = source || defaultSource(track.kind);
        const old = prev?.entries.find((e) => e.source === src && e.kind === track.kind);
        return {
          track,
          source: src,
          kind: track.kind,
          muted: old ? old.muted : track.enabled === false,
          trackId: old ? old.trackId : null,
          transceiver: old ? old.transceiver : null,
        };
      });
    if (entries.length === 0) {
      await this.unpublish(pcName);
      return [];
    }
    const dropped = prev ? prev.entries.filter((e) => !entries.some((n) => n.transceiver && n.transceiver === e.transceiver)) : [];
    const mustRecreate = dropped.some((e) => e.transceiver);
    this._local.set(pcName, { stream: prev?.stream || new MediaStream(), entries });
    if (!this._joined) return null;
    const gen = this._gen;
    try {
      if (mustRecreate) {
        // Removing a sender: start that connection afresh rather than renegotiate a removal.
        this._closeUp(pcName);
        for (const e of entries) e.transceiver = null;
        await this._requestIgnoring("unpublish", { pc: pcName }, ["not_found"]);
      }
      return await this._negotiateUp(pcName, gen);
    } catch (err) {
      if (gen !== this._gen) return null; // the session restarted: the rejoin publishes
      if (FATAL_PUBLISH.has(err.code)) {
        this._local.delete(pcName);
        this._closeUp(pcName);
      } else {
        err.willRetry = true; // the rejoin publishes these tracks again
        this._restartSession(`publish ${pcName}: ${err.code}`);
      }
      throw err;
    }
  }

  /** Stop publishing on `pcName` (closes that up connection; the node removes its tracks). */
  async unpublish(pcName) {
    const had = this._local.delete(pcName);
    const pc = this.upPcs.get(pcName);
    this._closeUp(pcName);
    this._recovering.delete(pcName);
    this._pcFailures.delete(pcName);
    this._updateState();
    if ((had || pc) && this._joined && this.socket?.connected) {
      await this._requestIgnoring("unpublish", { pc: pcName }, ["not_found"]);
    }
  }

  /**
   * Mute or unmute one of our published tracks by its node track id. The local sender's
   * track is disabled too (so nothing leaves the browser). Resolves with the node's Track.
   */
  async mute(trackId, muted) {
    const entry = this._findLocal((e) => e.trackId === trackId);
    if (entry) {
      entry.muted = !!muted;
      entry.track.enabled = !muted;
      this._emit("localmute", { trackId, source: entry.source, muted: !!muted });
    }
    let res;
    try {
      res = await this.request("mute", { track_id: trackId, muted: !!muted });
    } catch (err) {
      // Refused (no floor in a conference, ...): the track stays as the node has it.
      if (entry && err.code === "forbidden") {
        entry.muted = !muted;
        entry.track.enabled = muted;
        this._emit("localmute", { trackId, source: entry.source, muted: !muted });
      }
      throw err;
    }
    return res.track || null;
  }

  _onMutedByHost(msg) {
    const sources = Array.isArray(msg?.sources) ? msg.sources : [];
    for (const source of sources) {
      const entry = this._findLocal((e) => e.source === source);
      if (!entry || entry.muted) continue;
      entry.muted = true;
      entry.track.enabled = false;
      this._emit("localmute", { trackId: entry.trackId, source, muted: true });
    }
    this._emit("mutedbyhost", { sources, reason: msg?.reason, by: msg?.by ?? null });
  }

  /** Raise our hand (ask for the floor). */
  raiseHand() {
    return this.request("raise_hand", {});
  }

  /** Lower our hand, or (hosts) someone else's. */
  lowerHand(participantId = null) {
    return this.request("lower_hand", participantId ? { participant_id: participantId } : {});
  }

  /** Hosts: close a participant's microphone (the node stops forwarding it). */
  muteParticipant(participantId) {
    return this.request("mute_participant", { participant_id: participantId });
  }

  /** Hosts: close every microphone but the hosts'. */
  muteAll() {
    return this.request("mute_all", {});
  }

  /** Hosts: ask a participant to open the microphone (they decide). */
  askUnmute(participantId) {
    return this.request("ask_unmute", { participant_id: participantId });
  }

  /** Hosts: stop a participant's camera. */
  stopCamera(participantId) {
    return this.request("stop_camera", { participant_id: participantId });
  }

  /** Hosts: make a participant co-host ("cohost") or member again ("member"). */
  setRole(participantId, role) {
    return this.request("set_role", { participant_id: participantId, role });
  }

  /** Hosts: show a participant large for everyone (null: nobody). */
  spotlight(participantId) {
    return this.request("spotlight", { participant_id: participantId });
  }

  /** Hosts: give the floor to a participant. */
  grantFloor(participantId) {
    return this.request("grant_floor", { participant_id: participantId });
  }

  /** Hosts: start or stop recording the room (everyone sees that it is recorded). */
  setRecording(on) {
    return this.request(on ? "start_recording" : "stop_recording", {});
  }

  /** Hosts: take the floor back. */
  revokeFloor() {
    return this.request("revoke_floor", {});
  }

  /**
   * Mute or unmute our track of `source` ("microphone", "camera", ...). Works before join
   * (the state is applied when it publishes). Resolves with the node's Track or null.
   */
  async setMuted(source, muted) {
    const entry = this._findLocal((e) => e.source === source);
    if (!entry) return null;
    if (entry.trackId && this._joined && this.socket?.connected) return this.mute(entry.trackId, muted);
    entry.muted = !!muted;
    entry.track.enabled = !muted;
    this._emit("localmute", { trackId: entry.trackId, source, muted: !!muted });
    return null;
  }

  /** Whether our track of `source` is muted (null when there is none). */
  isMuted(source) {
    const entry = this._findLocal((e) => e.source === source);
    return entry ? entry.muted : null;
  }

  /** Swap the MediaStreamTrack of `source` (another camera, ...) without renegotiating. */
  async replaceTrack(source, track) {
    const entry = this._findLocal((e) => e.source === source);
    if (!entry) throw new ProtocolError("not_found", `no local ${source} track`, "replaceTrack");
    entry.track = track;
    track.enabled = !entry.muted;
    if (entry.transceiver && entry.transceiver.currentDirection !== "stopped") {
      await entry.transceiver.sender.replaceTrack(track);
    }
  }

  /** Leave the room: tells the node, closes every connection and the socket. */
  async leave() {
    const wasJoined = this._joined;
    this._wantJoined = false;
    clearTimeout(this._retryTimer);
    if (wasJoined && this.socket?.connected) {
      try {
        await this.request("leave", {}, { timeout: 3000 });
      } catch {
        /* closing the socket below ends the session anyway */
      }
    }
    if (this.inLobby && this.socket?.connected) {
      try {
        await this.request("leave", {}, { timeout: 3000 });
      } catch {
        /* closing the socket below ends the wait anyway */
      }
    }
    this._teardown();
    this._clearRemote();
    this.socket?.disconnect();
    this.participantId = null;
    if (this._joinWaiter) {
      this._joinWaiter.reject(new ProtocolError("left", "left before the join completed", "join"));
      this._joinWaiter = null;
    }
    this._updateState();
    this._emit("left", {});
  }

  /**
   * Send `event` with `payload` and wait for its ack. Resolves with the `ok` result; throws a
   * ProtocolError with the node's `code` for an `error` ack, "timeout" when no ack comes in
   * time, "disconnected" when the socket is down.
   */
  async request(event, payload = {}, { timeout } = {}) {
    const socket = this.socket;
    if (!socket || !socket.connected) throw new ProtocolError("disconnected", "not connected", event);
    let ack;
    try {
      ack = await socket.timeout(timeout ?? this.options.ackTimeout).emitWithAck(event, payload);
    } catch {
      throw new ProtocolError("timeout", `no answer to ${event}`, event);
    }
    if (ack && typeof ack === "object") {
      if (Object.prototype.hasOwnProperty.call(ack, "ok")) return ack.ok ?? {};
      if (ack.error && typeof ack.error === "object") {
        const err = new ProtocolError(String(ack.error.code || "internal"), ack.error.message, event);
        if (typeof ack.error.url === "string") err.url = ack.error.url; // wrong_node: where to go
        if (err.code === "not_joined" && event !== "join" && event !== "leave" && this._joined) {
          // The node forgot us (for example it restarted behind the same socket): join again.
          queueMicrotask(() => {
            if (this._joined) this._restartSession("not_joined");
          });
        }
        throw err;
      }
    }
    throw new ProtocolError("bad_response", `malformed answer to ${event}`, event);
  }

  /**
   * Listen to a node event this client does not handle itself (for example "chat_message");
   * the listener stays across reconnects. Returns an unsubscribe function.
   */
  onServer(event, fn) {
    const entry = [event, fn];
    this._serverListeners.push(entry);
    this.socket?.on(event, fn);
    return () => {
      this._serverListeners = this._serverListeners.filter((e) => e !== entry);
      this.socket?.off(event, fn);
    };
  }

  /** addEventListener with a plain callback receiving `detail`; returns an unsubscribe function. */
  on(type, fn) {
    const listener = (event) => fn(event.detail, event);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  // ------------------------------------------------------------------ socket and session

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _ensureSocket() {
    if (this.socket) return this.socket;
    const opts = {
      path: this.options.path,
      autoConnect: false,
      reconnection: true,
      reconnectionDelay: 1000,
      reconnectionDelayMax: 10000,
      ...this.options.socketOptions,
    };
    const socket = this.options.url ? io(this.options.url + NAMESPACE, opts) : io(NAMESPACE, opts);
    this.socket = socket;
    socket.on("connect", () => this._onConnect());
    socket.on("disconnect", (reason) => this._onDisconnect(reason));
    socket.on("connect_error", (err) => {
      if (this._wantJoined) this._emit("socketerror", { message: String(err?.message || err) });
    });
    socket.on("participant_joined", (p) => this._onParticipantJoined(p));
    socket.on("participant_left", (msg) => this._onParticipantLeft(msg));
    socket.on("participant_updated", (p) => this._onParticipantUpdated(p));
    socket.on("track_added", (track) => this._onTrackAdded(track));
    socket.on("track_updated", (track) => this._onTrackUpdated(track));
    socket.on("track_removed", (msg) => this._onTrackRemoved(msg));
    socket.on("active_speaker", (msg) => this._onActiveSpeaker(msg));
    socket.on("down_offer", (msg) => this._queueDownOffer(msg));
    socket.on("admitted", (res) => this._admission?.resolve(res));
    for (const [event, fn] of this._serverListeners) socket.on(event, fn);
    socket.on("meeting_ended", (msg) => this._stopByHost("ended", msg));
    socket.on("removed", (msg) => this._stopByHost("removed", msg));
    socket.on("muted_by_host", (msg) => this._onMutedByHost(msg));
    socket.on("unmute_requested", (msg) => this._emit("unmuterequested", msg || {}));
    socket.on("floor_granted", (msg) => this._emit("floorgranted", msg || {}));
    socket.on("hands_updated", (msg) => {
      this.hands = Array.isArray(msg?.queue) ? msg.queue : [];
      this._emit("handsupdated", { queue: this.hands });
    });
    socket.on("role_changed", (msg) => {
      this.role = msg?.role ?? this.role;
      this._emit("rolechanged", { role: this.role });
    });
    socket.on("denied", () => this._admission?.reject(new ProtocolError("denied", "a host did not admit you", "join")));
    socket.on("lobby_updated", (msg) => {
      this.waiting = Array.isArray(msg?.waiting) ? msg.waiting : [];
      this._emit("lobbyupdated", { waiting: this.waiting });
    });
    socket.on("room_updated", (info) => {
      this.roomInfo = { ...this.roomInfo, ...info };
      this._emit("roomupdated", this.roomInfo);
    });
    return socket;
  }

  _onConnect() {
    if (!this._wantJoined) return;
    this._teardown();
    this._scheduleSession(0);
  }

  _onDisconnect(reason) {
    // The node drops a participant whose socket goes: everything of this session is gone.
    this._teardown();
    this._updateState();
    if (!this._wantJoined) return;
    if (reason === "io server disconnect") {
      // socket.io-client does not reconnect by itself after a server-side disconnect.
      this._attempt += 1;
      const delay = backoffDelay(this._attempt, this.options.rejoinBaseDelay, this.options.rejoinMaxDelay);
      setTimeout(() => {
        if (this._wantJoined && this.socket && !this.socket.connected) this.socket.connect();
      }, delay);
    }
  }

  /** Invalidate the running session: close every connection, forget negotiation state. */
  _teardown() {
    this._gen += 1;
    clearTimeout(this._retryTimer);
    this._joined = false;
    this.inLobby = false;
    if (this._admission) {
      this._admission.reject(new ProtocolError("disconnected", "the lobby wait ended", "join"));
      this._admission = null;
    }
    this._established = false;
    this._epoch = null;
    for (const name of [...this.upPcs.keys()]) this._closeUp(name);
    for (const local of this._local.values()) {
      for (const e of local.entries) {
        e.transceiver = null;
        e.trackId = null;
      }
    }
    this._closeDown();
    this._recovering.clear();
    this._pcFailures.clear();
    this._upChains.clear();
  }

  _scheduleSession(delay) {
    clearTimeout(this._retryTimer);
    const gen = this._gen;
    this._retryTimer = setTimeout(() => this._session(gen), delay);
  }

  /** Tear down and start over (leave, join, publish, subscribe) after a backoff. */
  _restartSession(reason) {
    if (!this._wantJoined) return;
    const wasJoined = this._joined;
    this._teardown();
    this._updateState();
    this._attempt += 1;
    const delay = backoffDelay(this._attempt, this.options.rejoinBaseDelay, this.options.rejoinMaxDelay);
    console.info(`giaoban: rejoining in ${delay} ms (${reason})`);
    const gen = this._gen;
    (async () => {
      if (wasJoined && this.socket?.connected) {
        try {
          await this.request("leave", {}, { timeout: 3000 });
        } catch {
          /* best effort */
        }
      }
      if (gen === this._gen) this._scheduleSession(delay);
    })();
  }

  async _session(gen) {
    const stale = () => gen !== this._gen || !this._wantJoined;
    if (stale() || this._sessionGen === gen || !this.socket?.connected) return;
    this._sessionGen = gen;
    const rejoin = this._everJoined;
    this._beginEpoch();
    let res;
    try {
      const payload = { room: this.room, name: this.name };
      if (this.token) payload.token = this.token;
      if (this._ticket) payload.ticket = this._ticket;
      res = await this.request("join", payload);
      if (res.lobby) res = await this._waitInLobby(res, gen);
    } catch (err) {
      if (stale()) return;
      this._epoch = null;
      if (FATAL_JOIN.has(err.code)) {
        this._fail(err, "join");
        return;
      }
      if (err.code === "already_joined") this._joined = true; // _restartSession sends leave
      this._emit("error", { error: err, action: "join", fatal: false });
      this._restartSession(`join: ${err.code}`);
      return;
    }
    if (stale()) return;
    this._joined = true;
    this._everJoined = true;
    this.participantId = res.participant_id ?? null;
    if (this.participantId) this._ownIds.add(this.participantId);
    if (res.room) this.room = res.room;
    this.role = res.role ?? null;
    this._ticket = res.ticket ?? null;
    this.roomInfo = {
      room: res.room,
      title: res.title,
      mode: res.mode,
      locked: !!res.locked,
      floor: res.floor ?? null,
      spotlight: res.spotlight ?? null,
      recording: !!res.recording,
    };
    this.waiting = Array.isArray(res.waiting) ? res.waiting : [];
    this.hands = Array.isArray(res.hands) ? res.hands : [];
    this.iceServers = Array.isArray(res.ice_servers) ? res.ice_servers : [];
    this._applySnapshot(Array.isArray(res.participants) ? res.participants : []);
    this._emit("joined", {
      participantId: this.participantId,
      room: this.room,
      participants: [...this.participants.values()],
      rejoin,
      role: this.role,
    });
    if (this.waiting.length) this._emit("lobbyupdated", { waiting: this.waiting });
    this._updateState();
    try {
      for (const name of [...this._local.keys()]) {
        try {
          await this._negotiateUp(name, gen);
        } catch (err) {
          if (!FATAL_PUBLISH.has(err.code)) throw err;
          // The node refuses this publication: report it and go on without it.
          if (stale()) return;
          this._closeUp(name);
          this._emit("error", { error: err, action: "publish", pc: name, fatal: true });
        }
        if (stale()) return;
      }
      await this.request("subscribe", {});
    } catch (err) {
      if (stale()) return;
      this._emit("error", { error: err, action: "subscribe", fatal: false });
      this._restartSession(`${err.event || "session"}: ${err.code}`);
      return;
    }
    if (stale()) return;
    this._established = true;
    this._attempt = 0;
    this._updateState();
    if (this._joinWaiter) {
      this._joinWaiter.resolve({ participantId: this.participantId, participants: [...this.participants.values()] });
      this._joinWaiter = null;
    }
  }

  /** Wait in the lobby until a host admits us (the `admitted` result) or denies us. */
  _waitInLobby(res, gen) {
    this.inLobby = true;
    this._emit("lobby", { entryId: res.entry_id, title: res.title });
    return new Promise((resolve, reject) => {
      this._admission = {
        resolve: (admitted) => {
          this._admission = null;
          this.inLobby = false;
          if (gen === this._gen) resolve(admitted);
        },
        reject: (err) => {
          this._admission = null;
          this.inLobby = false;
          reject(err);
        },
      };
    });
  }

  /** A host ended the meeting or removed us: stop without trying to rejoin. */
  _stopByHost(type, msg) {
    if (!this._wantJoined) return;
    this._wantJoined = false;
    this._teardown();
    this._clearRemote();
    this.socket?.disconnect();
    this._updateState();
    const code = type === "ended" ? "room_ended" : "forbidden";
    const err = new ProtocolError(code, `stopped by a host (${type})`, "join");
    if (this._joinWaiter) {
      this._joinWaiter.reject(err);
      this._joinWaiter = null;
    }
    this._emit(type, { room: msg?.room ?? this.room });
  }

  /** Hosts: take a participant out of the meeting; their account or link cannot rejoin. */
  remove(participantId) {
    return this.request("remove", { participant_id: participantId });
  }

  /** Hosts: end the meeting for everyone (nobody can join it again). */
  endForAll() {
    return this.request("end", {});
  }

  /** Hosts: let a waiting person in (`entryId` from the lobby list). */
  admit(entryId) {
    return this.request("admit", { entry_id: entryId });
  }

  /** Hosts: turn a waiting person away. */
  deny(entryId) {
    return this.request("deny", { entry_id: entryId });
  }

  /** Hosts: lock the room (no one new gets in) or unlock it. */
  setLocked(locked) {
    return this.request("lock", { locked: !!locked });
  }

  _fail(err, action) {
    this._wantJoined = false;
    this._teardown();
    this._emit("error", { error: err, action, fatal: true });
    this.socket?.disconnect();
    this._updateState();
    if (this._joinWaiter) {
      this._joinWaiter.reject(err);
      this._joinWaiter = null;
    }
  }

  _updateState() {
    let state;
    if (!this._wantJoined) state = "disconnected";
    else if (!this._joined || !this._established) state = this._everJoined ? "reconnecting" : "connecting";
    else if (this._recovering.size > 0) state = "reconnecting";
    else state = "connected";
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    this._emit("state", { state, previous });
  }

  async _requestIgnoring(event, payload, codes) {
    try {
      return await this.request(event, payload);
    } catch (err) {
      if (codes.includes(err.code)) return null;
      throw err;
    }
  }

  _findLocal(predicate) {
    for (const local of this._local.values()) {
      const found = local.entries.find(predicate);
      if (found) return found;
    }
    return null;
  }

  // ------------------------------------------------------------------ remote participants

  _beginEpoch() {
    // Events that arrive while the join is in flight are newer than the join ack's snapshot.
    this._epoch = {
      staleP: new Set(this.participants.keys()),
      staleT: new Set(this.tracks.keys()),
      goneP: new Set(),
      goneT: new Set(),
    };
  }

  _applySnapshot(list) {
    const epoch = this._epoch || { staleP: new Set(), staleT: new Set(), goneP: new Set(), goneT: new Set() };
    this._epoch = null;
    for (const p of list) {
      if (!p || !p.id || this._ownIds.has(p.id) || epoch.goneP.has(p.id)) continue;
      epoch.staleP.delete(p.id);
      this._upsertParticipant(p);
      for (const track of p.tracks || []) {
        if (!track || !track.id || epoch.goneT.has(track.id)) continue;
        epoch.staleT.delete(track.id);
        this._upsertTrack({ participant_id: p.id, ...track });
      }
    }
    for (const id of epoch.staleT) this._removeTrack(id);
    for (const id of epoch.staleP) this._removeParticipant(id);
  }

  _upsertParticipant(p) {
    const known = this.participants.get(p.id);
    if (known) {
      known.name = p.name ?? known.name;
      known.role = p.role ?? known.role;
      known.site = p.site ?? known.site;
      return;
    }
    const participant = { id: p.id, name: p.name ?? "", role: p.role ?? "member", site: p.site ?? null };
    this.participants.set(p.id, participant);
    this._emit("participantjoined", { participant: { ...participant, tracks: p.tracks || [] } });
  }

  _upsertTrack(track) {
    const known = this.tracks.get(track.id);
    this.tracks.set(track.id, { ...known, ...track });
    if (!known) {
      this._emit("trackadded", { track: this.tracks.get(track.id) });
      if (this._pendingTracks.has(track.id)) this._announceTrackId(track.id);
    } else if (!!known.muted !== !!track.muted) {
      this._emit("trackupdated", { track: this.tracks.get(track.id) });
    }
  }

  _removeTrack(trackId) {
    const track = this.tracks.get(trackId);
    if (!track) return;
    this.tracks.delete(trackId);
    this.remoteTracks.delete(trackId);
    this._pendingTracks.delete(trackId);
    this._emit("trackremoved", { track_id: trackId, participant_id: track.participant_id });
  }

  _removeParticipant(participantId) {
    for (const [id, track] of [...this.tracks]) {
      if (track.participant_id === participantId) this._removeTrack(id);
    }
    if (this.participants.delete(participantId)) this._emit("participantleft", { participantId });
  }

  _clearRemote() {
    for (const id of [...this.participants.keys()]) this._removeParticipant(id);
    for (const id of [...this.tracks.keys()]) this._removeTrack(id);
  }

  _onParticipantJoined(p) {
    if (!p || !p.id || this._ownIds.has(p.id)) return;
    if (this._epoch) {
      this._epoch.staleP.delete(p.id);
      this._epoch.goneP.delete(p.id);
      for (const t of p.tracks || []) this._epoch.staleT.delete(t.id);
    }
    this._upsertParticipant(p);
    for (const track of p.tracks || []) if (track && track.id) this._upsertTrack({ participant_id: p.id, ...track });
  }

  /** A full Participant: authoritative for its name and its track list. */
  _onParticipantUpdated(p) {
    if (!p || !p.id || this._ownIds.has(p.id)) return;
    const listed = new Set();
    for (const track of Array.isArray(p.tracks) ? p.tracks : []) if (track && track.id) listed.add(track.id);
    if (this._epoch) {
      this._epoch.staleP.delete(p.id);
      for (const id of listed) this._epoch.staleT.delete(id);
    }
    const known = this.participants.get(p.id);
    const renamed =
      known && ((p.name !== undefined && p.name !== known.name) || (p.role !== undefined && p.role !== known.role));
    this._upsertParticipant(p);
    for (const track of p.tracks || []) if (track && track.id) this._upsertTrack({ participant_id: p.id, ...track });
    for (const [id, track] of [...this.tracks]) {
      if (track.participant_id === p.id && !listed.has(id)) this._removeTrack(id);
    }
    if (renamed) this._emit("participantupdated", { participant: { ...this.participants.get(p.id), tracks: p.tracks || [] } });
  }

  _onParticipantLeft(msg) {
    const id = msg?.participant_id;
    if (!id) return;
    if (this._epoch) this._epoch.goneP.add(id);
    this._removeParticipant(id);
  }

  _onTrackAdded(track) {
    if (!track || !track.id || this._ownIds.has(track.participant_id)) return;
    if (this._epoch) {
      this._epoch.staleT.delete(track.id);
      this._epoch.goneT.delete(track.id);
    }
    if (track.participant_id && !this.participants.has(track.participant_id)) {
      this._upsertParticipant({ id: track.participant_id, name: "" });
    }
    this._upsertTrack(track);
  }

  _onTrackUpdated(track) {
    if (!track || !track.id) return;
    if (!this.tracks.has(track.id)) {
      this._onTrackAdded(track);
      return;
    }
    this._upsertTrack(track);
  }

  _onTrackRemoved(msg) {
    const id = msg?.track_id;
    if (!id) return;
    if (this._epoch) this._epoch.goneT.add(id);
    this._removeTrack(id);
  }

  _onActiveSpeaker(msg) {
    this._emit("activespeaker", { participantId: msg?.participant_id ?? null, level: msg?.level ?? null });
  }

  // ------------------------------------------------------------------ peer connections

  _createPc(key) {
    const pc = new RTCPeerConnection({ iceServers: this.iceServers || [] });
    const meta = { key, ready: false, queue: [], timers: {}, closed: false, connectedOnce: false };
    this._meta.set(pc, meta);
    pc.addEventListener("icecandidate", (event) => this._onLocalCandidate(pc, event.candidate));
    pc.addEventListener("connectionstatechange", () => this._onPcState(pc));
    return pc;
  }

  _closePc(pc) {
    if (!pc) return;
    const meta = this._meta.get(pc);
    if (meta) {
      meta.closed = true;
      meta.queue = [];
      for (const timer of Object.values(meta.timers)) clearTimeout(timer);
    }
    try {
      pc.close();
    } catch {
      /* already closed */
    }
  }

  _closeUp(name) {
    const pc = this.upPcs.get(name);
    if (pc) this._closePc(pc);
    this.upPcs.delete(name);
    const local = this._local.get(name);
    if (local) for (const e of local.entries) e.transceiver = null;
  }

  _closeDown() {
    if (this.downPc) this._closePc(this.downPc);
    this.downPc = null;
    for (const [mid, trackId] of this._announced) this._emit("remotetrackended", { track_id: trackId, mid });
    this._announced.clear();
    this._downMids = new Map();
    this._pendingTracks.clear();
    this.remoteTracks.clear();
    this._downChain = Promise.resolve();
  }

  _isCurrent(pc) {
    if (pc === this.downPc) return true;
    for (const up of this.upPcs.values()) if (up === pc) return true;
    return false;
  }

  _onLocalCandidate(pc, candidate) {
    const meta = this._meta.get(pc);
    if (!meta || meta.closed) return;
    const init = candidateInit(candidate);
    if (!meta.ready) {
      meta.queue.push(init); // the node learns of this connection with publish / down_answer
      return;
    }
    this._sendIce(meta.key, init);
  }

  _flushIce(pc) {
    const meta = this._meta.get(pc);
    if (!meta || meta.closed) return;
    meta.ready = true;
    const queued = meta.queue;
    meta.queue = [];
    for (const init of queued) this._sendIce(meta.key, init);
  }

  _sendIce(key, candidate) {
    if (!this._joined || !this.socket?.connected) return;
    this.request("ice", { pc: key, candidate }).catch((err) => {
      if (err.code !== "not_joined") console.debug(`giaoban: ice for ${key} refused: ${err.code}`);
    });
  }

  _onPcState(pc) {
    const meta = this._meta.get(pc);
    if (!meta || meta.closed || !this._isCurrent(pc)) return;
    const state = pc.connectionState;
    this._emit("pcstate", { pc: meta.key, state });
    clearTimeout(meta.timers.disconnected);
    if (state === "connected") {
      meta.connectedOnce = true;
      clearTimeout(meta.timers.connect);
      this._pcFailures.delete(meta.key);
      this._recovering.delete(meta.key);
      this._updateState();
    } else if (state === "failed") {
      this._recoverPc(meta.key, "failed");
    } else if (state === "disconnected") {
      meta.timers.disconnected = setTimeout(() => {
        if (!meta.closed && this._isCurrent(pc) && pc.connectionState === "disconnected") {
          this._recoverPc(meta.key, "disconnected");
        }
      }, this.options.disconnectedGrace);
    }
  }

  /** After a negotiation: a connection that carries media must connect within a while. */
  _watchConnect(pc) {
    const meta = this._meta.get(pc);
    if (!meta || meta.closed || meta.connectedOnce || meta.timers.connect) return;
    if (pc.getTransceivers().length === 0 || pc.connectionState === "connected") return;
    meta.timers.connect = setTimeout(() => {
      meta.timers.connect = null;
      if (!meta.closed && this._isCurrent(pc) && pc.connectionState !== "connected") {
        this._recoverPc(meta.key, "timeout");
      }
    }, this.options.pcConnectTimeout);
  }

  /** Re-create one failed connection (publish again / subscribe again); escalate to a rejoin. */
  _recoverPc(key, reason) {
    if (!this._joined || !this._wantJoined) return;
    const gen = this._gen;
    const failures = (this._pcFailures.get(key) || 0) + 1;
    this._pcFailures.set(key, failures);
    this._recovering.add(key);
    this._updateState();
    console.info(`giaoban: connection ${key} ${reason} (attempt ${failures})`);
    if (failures > 2) {
      this._restartSession(`${key} ${reason} ${failures} times`);
      return;
    }
    // Close the broken connection now so that its events stop counting.
    if (key === "down") this._closeDown();
    else this._closeUp(key);
    (async () => {
      await sleep(backoffDelay(failures, 500, 4000));
      if (gen !== this._gen || !this._joined) return;
      try {
        if (key === "down") {
          await this.request("subscribe", {}); // the node starts a new down connection
          // Nothing to receive: the node may not offer at all until a track appears.
          if (gen === this._gen && this.tracks.size === 0) this._recovering.delete(key);
        } else {
          await this._requestIgnoring("unpublish", { pc: key }, ["not_found"]);
          if (gen !== this._gen) return;
          if (this._local.has(key)) await this._negotiateUp(key, gen);
          else this._recovering.delete(key);
        }
        this._updateState();
      } catch (err) {
        if (gen !== this._gen) return;
        this._emit("error", { error: err, action: "reconnect", pc: key, fatal: false });
        this._restartSession(`recover ${key}: ${err.code}`);
      }
    })();
  }

  // ------------------------------------------------------------------ up connections

  _negotiateUp(name, gen) {
    const previous = this._upChains.get(name) || Promise.resolve();
    const next = previous.catch(() => {}).then(() => this._doNegotiateUp(name, gen));
    this._upChains.set(name, next);
    return next;
  }

  async _doNegotiateUp(name, gen) {
    const stale = () => gen !== this._gen || !this._joined;
    const local = this._local.get(name);
    if (!local || stale()) return null;
    let pc = this.upPcs.get(name);
    if (pc && (pc.signalingState === "closed" || pc.connectionState === "failed")) {
      this._closeUp(name);
      pc = null;
    }
    let fresh = false;
    if (!pc) {
      pc = this._createPc(name);
      this.upPcs.set(name, pc);
      for (const e of local.entries) e.transceiver = null;
      fresh = true;
    }
    for (const e of local.entries) {
      e.track.enabled = !e.muted;
      if (!e.transceiver) {
        e.transceiver = pc.addTransceiver(e.track, { direction: "sendonly", streams: [local.stream] });
      } else if (e.transceiver.sender.track !== e.track) {
        await e.transceiver.sender.replaceTrack(e.track);
      }
    }
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    const tracks = local.entries.map((e) => ({ mid: e.transceiver.mid, source: e.source }));
    let res;
    try {
      res = await this.request("publish", { pc: name, sdp: pc.localDescription.sdp, tracks });
    } catch (err) {
      if (this.upPcs.get(name) === pc) {
        if (fresh) this._closeUp(name);
        else if (pc.signalingState === "have-local-offer") {
          await pc.setLocalDescription({ type: "rollback" }).catch(() => {});
        }
      }
      throw err;
    }
    if (stale() || this.upPcs.get(name) !== pc) return null;
    await pc.setRemoteDescription({ type: "answer", sdp: res.sdp });
    const serverTracks = Array.isArray(res.tracks) ? res.tracks : [];
    this._assignTrackIds(local, serverTracks);
    this._flushIce(pc);
    this._watchConnect(pc);
    // Re-apply mutes chosen before this (re)publication.
    for (const e of local.entries) {
      const known = serverTracks.find((t) => t.id === e.trackId);
      if (e.trackId && e.muted && !(known && known.muted)) {
        await this._requestIgnoring("mute", { track_id: e.trackId, muted: true }, ["not_found"]);
        if (stale()) return null;
      }
    }
    this._emit("published", { pc: name, tracks: serverTracks });
    return serverTracks;
  }

  _assignTrackIds(local, serverTracks) {
    const unused = [...serverTracks];
    for (const e of local.entries) {
      let i = unused.findIndex((t) => t.source === e.source && t.kind === e.kind);
      if (i < 0) i = unused.findIndex((t) => t.kind === e.kind);
      if (i >= 0) e.trackId = unused.splice(i, 1)[0].id;
    }
  }

  // ------------------------------------------------------------------ down connection

  _queueDownOffer(msg) {
    const gen = this._gen;
    this._downChain = this._downChain
      .then(() => this._handleDownOffer(msg, gen))
      .catch((err) => console.error("giaoban: down_offer", err));
  }

  async _handleDownOffer(msg, gen) {
    const stale = () => gen !== this._gen || !this._wantJoined;
    if (stale() || !msg || typeof msg.sdp !== "string") return;
    let pc = this.downPc;
    if (!pc || pc.signalingState === "closed") {
      pc = this._createPc("down");
      pc.addEventListener("track", (event) => {
        if (pc === this.downPc) this._announceMid(event.transceiver?.mid);
      });
      this.downPc = pc;
      this._announced.clear();
    }
    const mids = new Map();
    for (const item of Array.isArray(msg.tracks) ? msg.tracks : []) {
      if (item && item.mid !== undefined && item.mid !== null && item.track_id) {
        mids.set(String(item.mid), String(item.track_id));
      }
    }
    this._downMids = mids; // before setRemoteDescription: ontrack fires during it
    try {
      await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
    } catch (err) {
      if (stale() || pc !== this.downPc) return;
      console.error("giaoban: cannot apply down_offer", err);
      this._recoverPc("down", "bad offer");
      return;
    }
    if (stale() || pc !== this.downPc) return;
    this._reconcileRemote();
    try {
      await this.request("down_answer", { revision: msg.revision, sdp: pc.localDescription.sdp });
    } catch (err) {
      if (stale() || pc !== this.downPc) return;
      if (err.code === "conflict") return; // superseded: the node sends a newer offer
      this._emit("error", { error: err, action: "subscribe", fatal: false });
      this._recoverPc("down", `down_answer ${err.code}`);
      return;
    }
    this._flushIce(pc);
    if (pc.getTransceivers().length === 0) {
      this._recovering.delete("down"); // nothing to carry yet: nothing to wait for
      this._updateState();
    }
    this._watchConnect(pc);
  }

  _reconcileRemote() {
    for (const [mid, trackId] of [...this._announced]) {
      if (this._downMids.get(mid) !== trackId) {
        this._announced.delete(mid);
        if (this.remoteTracks.has(trackId) && ![...this._announced.values()].includes(trackId)) {
          this.remoteTracks.delete(trackId);
        }
        this._emit("remotetrackended", { track_id: trackId, mid });
      }
    }
    for (const mid of this._downMids.keys()) this._announceMid(mid);
  }

  _announceTrackId(trackId) {
    for (const [mid, id] of this._downMids) if (id === trackId) this._announceMid(mid);
  }

  _announceMid(mid) {
    if (mid === null || mid === undefined || !this.downPc) return;
    const trackId = this._downMids.get(String(mid));
    if (!trackId || this._announced.get(String(mid)) === trackId) return;
    const transceiver = this.downPc.getTransceivers().find((tr) => tr.mid === String(mid));
    if (!transceiver) return;
    const info = this.tracks.get(trackId);
    if (!info) {
      this._pendingTracks.add(trackId); // announced when track_added arrives
      return;
    }
    this._pendingTracks.delete(trackId);
    this._announced.set(String(mid), trackId);
    const mediaStreamTrack = transceiver.receiver.track;
    this.remoteTracks.set(trackId, mediaStreamTrack);
    this._emit("remotetrack", {
      track_id: trackId,
      participant_id: info.participant_id,
      kind: info.kind || mediaStreamTrack.kind,
      source: info.source || defaultSource(mediaStreamTrack.kind),
      mediaStreamTrack,
      mid: String(mid),
      track: info,
    });
  }
}
