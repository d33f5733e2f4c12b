"""Two daemons on one PostgreSQL database receive and process mail; one is killed with ``kill -9``
under load. Every message that got 250 (from either) is stored once and its ``incoming_email`` task
runs once; the survivor takes over the dead node's claimed messages after their lease, and the dead
node, restarted, takes over at once what its own host's dead process still held.

Real daemon subprocesses, real smtplib senders, the machine's PostgreSQL server (a fresh database);
DNS is the fake server of :mod:`tests.e2e.dnsfake`. The helpers are those of ``test_nodes_pg.py``.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.e2e.test_nodes_pg import Nodes, SmtpLoad, api, client, dns, new_session, nodes, pid_of
from tests.helpers import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]
__all__ = ["dns", "nodes"]  # fixtures used here


@pytest.mark.slow
async def test_kill_9_of_one_of_two_receiving_nodes_every_250_is_stored_and_run_once(nodes: Nodes) -> None:
    a = nodes.serve("a", "smtp,worker,web")
    b = nodes.serve("b", "smtp,worker")
    async with client(a) as http:
        sid = await new_session(http)
        address = (await api(http, "POST", f"/api/sessions/{sid}/address", 200, json={}))["address"]
    load_a, load_b = SmtpLoad(a.smtp_port, address, senders=3), SmtpLoad(b.smtp_port, address, senders=3)
    with load_a:
        with load_b:  # its senders stop once b is dead
            await wait_until(lambda: load_a.count(lambda c: c == 250) + load_b.count(lambda c: c == 250) >= 300, 120,
                             "300 messages accepted by the two nodes")

            async def b_holds_claims() -> bool:
                rows = await nodes.query("SELECT worker FROM inbound_queue WHERE worker IS NOT NULL")
                return any(pid_of(r["worker"]) == b.pid for r in rows)

            await wait_until(b_holds_claims, 60, "node b to hold claimed messages")  # so the kill leaves some behind
            b.kill()
        left = [r for r in await nodes.query("SELECT worker FROM inbound_queue") if pid_of(r["worker"]) == b.pid]
        accepted = load_a.count(lambda c: c == 250)
        await wait_until(lambda: load_a.count(lambda c: c == 250) >= accepted + 100, 60,
                         "100 more messages accepted by node a after the kill")
    results = load_a.results + load_b.results
    assert load_b.errors, "node b's senders should have seen it die"
    assert not load_a.errors, load_a.errors[:5]
    codes = Counter(code for _, code, _ in results)
    assert all(code == 250 or 400 <= code < 500 for code in codes), codes  # never a 5xx

    async def settled() -> bool:
        queued = (await nodes.query("SELECT COUNT(*) FROM inbound_queue"))[0][0]
        busy = (await nodes.query("SELECT COUNT(*) FROM tasks WHERE state IN ('queued', 'running')"))[0][0]
        return queued == 0 and busy == 0

    await wait_until(settled, 120, "node a to process every queued message and run every task")
    rows = await nodes.query("SELECT id, message_id FROM emails WHERE session_id = $1", sid)
    copies = Counter(str(r["message_id"]).strip("<>") for r in rows)
    for mid, code, text in results:
        if code == 250:
            assert copies[mid] == 1, (mid, code, text, copies[mid])
        else:
            assert copies[mid] <= 1, (mid, code, text, copies[mid])
    # a message whose DATA was cut by the kill got no reply: stored at most once
    assert set(copies.values()) == {1}, copies.most_common(3)
    email_ids = {str(r["id"]) for r in rows}
    tasks = await nodes.query("SELECT arguments, state, worker FROM tasks WHERE action = 'incoming_email'")
    per_email = Counter(e for t in tasks for e in email_ids if e in t["arguments"])
    assert set(per_email) == email_ids and set(per_email.values()) == {1}, per_email.most_common(3)
    assert {t["state"] for t in tasks} == {"succeeded"}
    announces = await nodes.query("SELECT COUNT(*) FROM tasks WHERE action = 'announce' AND state = 'succeeded'")
    assert announces[0][0] == len(email_ids)  # each incoming_email's callback ran once
    assert len(tasks) == len(email_ids)
    print(f"{len(results)} messages answered, {codes[250]} accepted, {len(email_ids)} stored, "
          f"{len(load_b.errors)} cut by the kill, {len(left)} left claimed by the dead node")


@pytest.mark.slow
async def test_a_node_restarted_after_kill_9_takes_over_its_claims_at_once(nodes: Nodes) -> None:
    """The queue lease is long here (600 s): only the takeover at start can process them soon."""
    nodes.dns.silent.set()  # lookups go unanswered: node b holds its claims, mid-processing
    try:
        b = nodes.serve("b", "smtp,worker,web", smtp={"queue_lease": 600.0, "dns_timeout": 60.0})
        async with client(b) as http:
            sid = await new_session(http)
            address = (await api(http, "POST", f"/api/sessions/{sid}/address", 200, json={}))["address"]
        with SmtpLoad(b.smtp_port, address, senders=2) as load:
            await wait_until(lambda: load.count(lambda c: c == 250) >= 20, 60, "20 messages accepted")
        accepted = [mid for mid, code, _ in load.results if code == 250]

        async def all_claimed() -> bool:
            return (await nodes.query("SELECT COUNT(*) FROM inbound_queue WHERE worker IS NULL"))[0][0] == 0

        await wait_until(all_claimed, 30, "every queued message claimed by node b")
        b.kill()
    finally:
        nodes.dns.silent.clear()
    again = nodes.serve("b2", "worker", smtp={"queue_lease": 600.0, "dns_timeout": 60.0})

    async def processed() -> bool:
        return (await nodes.query("SELECT COUNT(*) FROM inbound_queue"))[0][0] == 0

    await wait_until(processed, 20, "the restarted node to process what the dead one held")
    rows = await nodes.query("SELECT message_id FROM emails WHERE session_id = $1", sid)
    copies = Counter(str(r["message_id"]).strip("<>") for r in rows)
    assert all(copies[mid] == 1 for mid in accepted) and set(copies.values()) == {1}
    taken = again.events("mail.claims_taken_over")
    assert len(taken) == 1 and f":{b.pid}:" in taken[0]["message"], taken
