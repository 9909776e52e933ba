// Live preview in the page: WHEP (RFC 9725) over a plain RTCPeerConnection, no player library.
//
// Each tile of the player panel is one WHEP session of one channel. The browser offers to
// receive only (a recvonly video and a recvonly audio transceiver) and sends its offer whole,
// once ICE gathering has finished: the gateway takes no trickle ICE (RFC 9725 §4.3 lets a server
// go without it; PATCH gets 405). The offer is POSTed to /whep/channels/{id} with the console's
// bearer token; a 201 carries the SDP answer and, in Location, the session, which is DELETEd when
// the tile is closed, when the connection fails, and (fetch keepalive) when the page goes away.
// A refusal shows the gateway's own JSON message in the tile (409 device offline, 503 limit or
// device not answering, 415 a codec the browser cannot take, such as H.265).
//
// The panel sits above the routed page, so the pictures keep playing while the operator moves
// around the console; several channels play at once in its grid.

import { t } from "./i18n.js";
import * as A from "./api.js";
import { h, $ } from "./dom.js";

export const MAX_TILES = 16;
// Non-trickle: the offer waits for ICE gathering, but not for ever (a host with a broken
// interface may never finish); what was gathered by then is sent.
const GATHER_TIMEOUT_MS = 2000;
// Statuses with their own words; any other refusal says "preview refused" and the message.
const KNOWN = new Set([0, 400, 401, 403, 404, 409, 415, 503]);

const players = new Map(); // channel id -> Player
// GB/T 28181 Appendix D type codes (ID digits 11-13) of channels that have no picture: a
// display, alarm inputs and outputs, voice input and output. They get no play button; any
// other ID (cameras 131/132, encoders, non-standard IDs) does, and the gateway decides.
const NO_PICTURE = new Set(["133", "134", "135", "136", "137"]);

export function canPreview(channelId) {
  return !(/^\d{20}$/.test(channelId) && NO_PICTURE.has(channelId.slice(10, 13)));
}

function sessionIdOf(url) {
  try {
    return decodeURIComponent(new URL(url).pathname.split("/").pop() || "");
  } catch (_) {
    return "";
  }
}

// Resolves once ICE gathering is complete, or after `ms` (then the offer goes with the
// candidates gathered so far).
function gathered(pc, ms) {
  return new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") {
      resolve();
      return;
    }
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    const timer = setTimeout(done, ms);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

// A line of text: a plain string (the gateway's own words), or [i18n key, ...args] whose args
// are lines themselves (translated again after a language switch).
function say(part) {
  return Array.isArray(part) ? t(part[0], ...part.slice(1).map(say)) : String(part);
}

class Player {
  constructor(channel) {
    this.channel = channel;
    this.id = channel.id;
    this.pc = null;
    this.resource = null; // the session's URL (the 201's Location) while the gateway holds it
    this.done = false; // the session is over (closed, failed, refused or ended by the gateway)
    this.status = null; // the lines of text shown over the picture (see say())
    this.video = h("video", { autoplay: true, muted: true, playsinline: true, "data-video": this.id });
    this.video.muted = true; // the property, not only the attribute: muted autoplay needs no gesture
    this.text = h("div", { class: "player-status", role: "status" });
    this.size = h("span", { class: "player-size" });
    this.retryBtn = h("button", { class: "small", "data-retry": this.id, hidden: true, onclick: () => restart(this) });
    this.closeBtn = h("button", { class: "x", "data-close": this.id, onclick: () => this.close() }, "×");
    // Sound is off at first (muted autoplay needs no click); shown once the gateway sends audio.
    this.soundBtn = h("button", { class: "small", "data-sound": this.id, hidden: true, onclick: () => this.toggleSound() });
    this.el = h(
      "div",
      { class: "player", "data-player": this.id, "data-state": "connecting" },
      h("div", { class: "player-head" },
        h("span", { class: "player-name", title: this.id }, channel.name || this.id),
        this.size,
        this.soundBtn,
        this.retryBtn,
        this.closeBtn),
      h("div", { class: "player-body" }, this.video, this.text)
    );
    this.video.addEventListener("playing", () => {
      if (!this.done) this.setState("playing", null);
    });
    this.video.addEventListener("dblclick", () => {
      if (this.video.requestFullscreen) this.video.requestFullscreen().catch(() => {});
    });
    this.video.addEventListener("resize", () => {
      this.size.textContent = this.video.videoWidth ? `${this.video.videoWidth}×${this.video.videoHeight}` : "";
    });
    this.relabel();
  }

  relabel() {
    this.closeBtn.title = t("preview.close");
    this.closeBtn.setAttribute("aria-label", t("preview.close"));
    this.soundBtn.textContent = this.video.muted ? "🔇" : "🔊";
    this.soundBtn.title = t(this.video.muted ? "preview.sound_on" : "preview.sound_off");
    this.video.title = t("preview.fullscreen");
    this.retryBtn.textContent = t("preview.retry");
    if (this.status) this.text.textContent = this.status.map(say).join("\n");
  }

  toggleSound() {
    this.video.muted = !this.video.muted;
    this.relabel();
  }

  // state: connecting | starting | playing | unstable | error | ended. status: what the text
  // over the picture says, one line per part (see say()); null: nothing (the picture shows).
  setState(state, ...status) {
    this.el.dataset.state = state;
    this.status = status[0] === null ? null : status;
    this.text.hidden = this.status === null;
    this.retryBtn.hidden = !(state === "error" || state === "ended");
    this.relabel();
    if (!this.status) this.text.textContent = "";
  }

  async start() {
    this.setState("connecting", ["preview.connecting"]);
    if (typeof RTCPeerConnection === "undefined") {
      this.fail(0, null, ["preview.no_webrtc"]);
      return;
    }
    // No ICE servers: the gateway's host candidates (or its announced address) are enough on a
    // LAN, and the browser never asks a public STUN server.
    const pc = new RTCPeerConnection();
    this.pc = pc;
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });
    const stream = new MediaStream();
    this.video.srcObject = stream;
    pc.addEventListener("track", (ev) => {
      stream.addTrack(ev.track);
      if (ev.track.kind === "audio") this.soundBtn.hidden = false;
    });
    pc.addEventListener("connectionstatechange", () => this.connectionChanged());
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc, GATHER_TIMEOUT_MS);
    } catch (err) {
      this.fail(0, String(err && err.message ? err.message : err));
      return;
    }
    if (this.done) return;
    const url = new URL(`/whep/channels/${encodeURIComponent(this.id)}`, location.href).href;
    let resp;
    try {
      resp = await fetch(url, {
        method: "POST",
        headers: { ...A.authHeaders(), "Content-Type": "application/sdp" },
        body: pc.localDescription.sdp,
      });
    } catch (err) {
      this.fail(0, String(err && err.message ? err.message : err));
      return;
    }
    if (resp.status !== 201) {
      const err = await A.errorOf(resp);
      this.fail(resp.status, err.message, null, resp.headers.get("Retry-After"));
      if (resp.status === 401) A.unauthorized();
      return;
    }
    const where = resp.headers.get("Location");
    this.resource = where ? new URL(where, url).href : null;
    const answer = await resp.text();
    if (this.done) {
      // Closed while the gateway was answering (a cold channel waits for the device): the
      // session it just made ends at once.
      this.release(false);
      return;
    }
    this.el.dataset.session = this.resource ? sessionIdOf(this.resource) : "";
    try {
      await pc.setRemoteDescription({ type: "answer", sdp: answer });
    } catch (err) {
      this.fail(0, String(err && err.message ? err.message : err));
      return;
    }
    this.watchTransports();
    if (!this.done && this.el.dataset.state === "connecting") this.setState("starting", ["preview.starting"]);
  }

  connectionChanged() {
    if (this.done || !this.pc) return;
    const state = this.pc.connectionState;
    if (state === "failed") {
      this.fail(0, null, ["preview.failed"]);
    } else if (state === "disconnected") {
      // Consent checks went unanswered: Chromium says "failed" some ten seconds later if they
      // stay so, and the session ends then.
      this.setState("unstable", ["preview.unstable"]);
    } else if (state === "connected" && this.el.dataset.state === "unstable") {
      if (this.video.readyState >= 2) this.setState("playing", null);
      else this.setState("starting", ["preview.starting"]);
    }
  }

  // The gateway ending the session (device offline, its time limit, a DELETE from elsewhere,
  // the gateway stopping) closes DTLS at once (close_notify), while ICE would take many seconds
  // to notice: the transport's "closed" is the sign.
  watchTransports() {
    const seen = new Set();
    for (const r of this.pc.getReceivers()) {
      const tr = r.transport;
      if (!tr || seen.has(tr)) continue;
      seen.add(tr);
      tr.addEventListener("statechange", () => {
        if (this.done) return;
        if (tr.state === "closed") this.ended();
        else if (tr.state === "failed") this.fail(0, null, ["preview.failed"]);
      });
    }
  }

  ended() {
    this.resource = null; // gone on the gateway already
    this.stop();
    this.setState("ended", ["preview.ended"]);
  }

  // A refusal or a failure: the session ends, the tile stays with the reason in it.
  fail(status, message, hint, retryAfter) {
    if (this.done) return;
    this.stop();
    const key = hint || [KNOWN.has(status) ? `preview.http_${status}` : "preview.http_other"];
    const lines = [status ? ["preview.http", key, String(status)] : key];
    if (message) lines.push(message);
    if (retryAfter && /^\d+$/.test(retryAfter)) lines.push(["preview.retry_after", retryAfter]);
    this.el.dataset.status = String(status);
    this.setState("error", ...lines);
  }

  // Ends the session: the gateway's side with a DELETE, then the peer connection (closed after
  // the DELETE is answered, so that the gateway hears "deleted" rather than a DTLS close racing
  // it). The tile stays. Resolves when the gateway has answered.
  stop(keepalive = false) {
    if (this.done) return Promise.resolve();
    this.done = true;
    this.video.srcObject = null;
    this.size.textContent = "";
    this.soundBtn.hidden = true;
    const pc = this.pc;
    const released = this.release(keepalive);
    if (pc) released.finally(() => pc.close());
    return released;
  }

  release(keepalive) {
    const url = this.resource;
    this.resource = null;
    if (!url) return Promise.resolve();
    return fetch(url, { method: "DELETE", headers: A.authHeaders(), keepalive }).catch(() => {
      // The gateway ends it anyway when ICE consent stops.
    });
  }

  close() {
    const stopped = this.stop();
    this.el.remove();
    if (players.get(this.id) === this) players.delete(this.id);
    drawPanel();
    return stopped;
  }
}

function restart(old) {
  old.stop();
  const fresh = new Player(old.channel);
  old.el.replaceWith(fresh.el);
  players.set(fresh.id, fresh);
  fresh.start().catch((err) => fresh.fail(0, String(err && err.message ? err.message : err)));
}

function drawPanel() {
  const root = $("#players");
  if (!root) return;
  if (!root.firstChild) {
    root.append(
      h("div", { class: "players-head" },
        h("h2", { class: "players-title" }),
        h("span", { class: "players-count" }),
        h("button", { class: "small", id: "players-close-all", onclick: closeAll })),
      h("div", { class: "player-grid", id: "player-grid" })
    );
  }
  root.hidden = players.size === 0;
  $(".players-title", root).textContent = t("preview.title");
  $(".players-count", root).textContent = t("preview.count", players.size);
  $("#players-close-all", root).textContent = t("preview.close_all");
}

// Opens a tile for the channel ({id, name}); a channel already playing is shown instead of
// opened twice, and one that ended is started again. False when the grid is full.
export function play(channel) {
  const open = players.get(channel.id);
  if (open && !open.done) {
    open.el.scrollIntoView({ block: "nearest" });
    open.el.classList.remove("flash");
    void open.el.offsetWidth; // restart the animation
    open.el.classList.add("flash");
    return true;
  }
  if (open) {
    restart(open);
    return true;
  }
  if (players.size >= MAX_TILES) return false;
  drawPanel();
  const player = new Player(channel);
  players.set(channel.id, player);
  $("#player-grid").append(player.el);
  drawPanel();
  player.start().catch((err) => player.fail(0, String(err && err.message ? err.message : err)));
  return true;
}

// Closes every tile; resolves once the gateway has answered each DELETE (logging out waits
// for it, while the token still works).
export function closeAll() {
  return Promise.all([...players.values()].map((player) => player.close()));
}

// After a language switch.
export function relabel() {
  for (const player of players.values()) player.relabel();
  if (players.size) drawPanel();
}

// The page going away (closed tab, reload, another site) ends every session on the gateway at
// once instead of leaving it to ICE consent: a keepalive fetch outlives the page. A page kept
// in the back-forward cache comes back with its tiles ended (Retry starts them again).
window.addEventListener("pagehide", () => {
  for (const player of players.values()) {
    if (player.done) continue;
    player.stop(true);
    player.setState("ended", ["preview.ended"]);
  }
});
