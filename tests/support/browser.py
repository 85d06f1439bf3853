"""What browser tests do through the meeting page's real UI, and read back from it."""

from __future__ import annotations

from typing import Any

from playwright.async_api import Page

from tests.conftest import TEST_PASSWORD


async def sign_in(page: Page, node: Any, username: str) -> None:
    """Sign in through /login as `username` (password TEST_PASSWORD)."""
    await page.goto(f"{node.url}/login", wait_until="domcontentloaded")
    await page.fill("#username", username)
    await page.fill("#password", TEST_PASSWORD)
    await page.click("#login-form [type=submit]")
    await page.wait_for_selector(".account-name")


async def join_via_ui(page: Page, node: Any, room: str, name: str, role: str = "member") -> str:
    """Invitation link → pre-join check → meeting; returns the page's participant id."""
    token = await node.invite(room, role)
    await page.goto(node.invitation_url(room, token), wait_until="domcontentloaded")
    await page.fill("#display-name", name)
    # The camera preview plays before joining: the pre-join check works.
    await page.wait_for_function(
        "() => { const v = document.querySelector('#preview'); return v && v.videoWidth > 0; }",
        timeout=5_000,
    )
    await page.click("#join")
    await page.wait_for_selector('#conn-state[data-state="connected"]', timeout=10_000)
    return await page.evaluate("() => window.giaoban.client.participantId")


VIDEO_STATS = """
async ([participantId, seconds]) => {
  const tile = document.querySelector(`#grid .tile[data-participant-id="${participantId}"]`);
  const video = tile && tile.querySelector('video');
  if (!video || !video.srcObject) return {error: 'no video element for ' + participantId};
  const track = video.srcObject.getVideoTracks()[0];
  if (!track) return {error: 'no video track'};
  const pc = window.giaoban.client.downPc;
  async function read() {
    const stats = await pc.getStats();
    for (const s of stats.values()) {
      if (s.type === 'inbound-rtp' && s.kind === 'video' && s.trackIdentifier === track.id) {
        return {decoded: s.framesDecoded || 0, freezes: s.freezeCount || 0,
                freezeSeconds: s.totalFreezesDuration || 0, lost: s.packetsLost || 0,
                nacks: s.nackCount || 0, plis: s.pliCount || 0, codec: s.codecId};
      }
    }
    return null;
  }
  const a = await read();
  if (!a) return {error: 'no inbound-rtp for the tile\\'s track'};
  // A measurement window, not synchronisation: the rate is frames over these seconds.
  await new Promise(resolve => setTimeout(resolve, seconds * 1000));
  const b = await read();
  return {fps: (b.decoded - a.decoded) / seconds, videoWidth: video.videoWidth,
          videoHeight: video.videoHeight, freezes: b.freezes - a.freezes,
          freezeSeconds: b.freezeSeconds - a.freezeSeconds, lost: b.lost, nacks: b.nacks,
          plis: b.plis - a.plis};
}
"""

SENT_STATS = """
async (seconds) => {
  const pc = window.giaoban.client.upPcs.get('main');
  async function read() {
    const stats = await pc.getStats();
    for (const s of stats.values()) {
      if (s.type === 'outbound-rtp' && s.kind === 'video') return s.framesEncoded || 0;
    }
    return null;
  }
  const a = await read();
  await new Promise(resolve => setTimeout(resolve, seconds * 1000));
  const b = await read();
  return a === null || b === null ? null : (b - a) / seconds;
}
"""


async def received_video(page: Page, participant_id: str, seconds: float) -> dict[str, Any]:
    """Frame rate and freezes of `participant_id`'s video as this page decodes it."""
    result = await page.evaluate(VIDEO_STATS, [participant_id, seconds])
    assert "error" not in result, result
    return result


async def sent_video_fps(page: Page, seconds: float) -> float:
    """Frames per second this page's camera track encodes and sends."""
    fps = await page.evaluate(SENT_STATS, seconds)
    assert fps is not None, "no outbound video on the page"
    return fps


DOWN_ROUND_TRIP = """
async (timeoutMs) => {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const stats = await window.giaoban.client.downPc.getStats();
    for (const s of stats.values()) {
      if (s.type === 'remote-outbound-rtp' && s.kind === 'video'
          && s.roundTripTimeMeasurements > 0) {
        // Chromium leaves roundTripTime out; the mean comes from the total.
        return {measurements: s.roundTripTimeMeasurements,
                seconds: (s.totalRoundTripTime || 0) / s.roundTripTimeMeasurements};
      }
    }
    if (Date.now() > deadline) return null;
    await new Promise(resolve => setTimeout(resolve, 100));  // the next statistics
  }
}
"""


async def down_round_trip(page: Page, timeout: float = 8.0) -> dict[str, float] | None:
    """The round-trip time the page's down connection measured for a video it receives
    (RTCP XR: RRTR answered by DLRR), once Chromium reports one; None if it has not by then."""
    return await page.evaluate(DOWN_ROUND_TRIP, timeout * 1000)


SENDER_REPORTS = """
async ([kind, reports, timeoutMs]) => {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const stats = await window.giaoban.client.downPc.getStats();
    let remote = null, inbound = null;
    for (const s of stats.values()) {
      if (s.kind !== kind) continue;
      if (s.type === 'remote-outbound-rtp') remote = s;
      if (s.type === 'inbound-rtp') inbound = s;
    }
    if (remote && inbound && remote.reportsSent >= reports) {
      return {reportsSent: remote.reportsSent, packetsSent: remote.packetsSent,
              packetsReceived: inbound.packetsReceived,
              clockOffsetMs: remote.remoteTimestamp - Date.now()};
    }
    if (Date.now() > deadline) return null;
    await new Promise(resolve => setTimeout(resolve, 100));  // the next statistics
  }
}
"""


async def down_sender_reports(
    page: Page, kind: str, reports: int, timeout: float = 8.0
) -> dict[str, float] | None:
    """What the page's down connection learnt from the node's RTCP sender reports for a `kind`
    stream it receives, once `reports` of them came; None if they have not by then."""
    return await page.evaluate(SENDER_REPORTS, [kind, reports, timeout * 1000])


async def wait_for_remote_video(page: Page, participant_id: str, timeout: float = 5.0) -> None:
    """Wait until the tile of `participant_id` shows decoded video (short timeout: fail fast)."""
    await page.wait_for_function(
        """(pid) => {
          const t = document.querySelector(`#grid .tile[data-participant-id="${pid}"]`);
          const v = t && t.querySelector('video');
          return v && v.videoWidth > 0;
        }""",
        arg=participant_id,
        timeout=timeout * 1000,
    )
