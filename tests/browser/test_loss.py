"""With 3 % of media packets lost on both legs, a browser subscriber still gets smooth video."""

from __future__ import annotations

import asyncio

from tests.support.browser import (
    join_via_ui,
    received_video,
    sent_video_fps,
    wait_for_remote_video,
)
from tests.support.loss import packet_loss


async def test_three_percent_loss_both_ways_keeps_the_frame_rate(node, new_page):
    publisher, subscriber = await new_page(), await new_page()
    with packet_loss(0.03) as loss:
        publisher_id = await join_via_ui(publisher, node, "lossy", "UBND xã C")
        await join_via_ui(subscriber, node, "lossy", "UBND tỉnh")
        await wait_for_remote_video(subscriber, publisher_id, timeout=8.0)
        # Let the first seconds' ramp-up pass so the window measures the steady state.
        await received_video(subscriber, publisher_id, 2.0)
        sent, seen = await asyncio.gather(
            sent_video_fps(publisher, 5.0), received_video(subscriber, publisher_id, 5.0)
        )
    print(f"\nloss: {loss}\nsent {sent:.1f} fps, decoded {seen}\nnode {node.stats}")
    assert loss.dropped_in > 0.015 * loss.received, loss
    # Every forwarded packet met the drop hook (the C loop's too), RTCP besides.
    assert loss.sent >= node.stats.forwarded_packets > 500, (loss, node.stats)
    assert loss.dropped_out > 0.015 * loss.sent, loss
    assert node.stats.retransmitted_packets > 0, "the node answered the subscriber's NACKs"
    assert seen["fps"] >= 0.9 * sent, f"sent {sent:.1f} fps, decoded {seen}"
    assert seen["freezes"] == 0, seen
