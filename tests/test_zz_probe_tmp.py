import secrets, time, pytest
from tests.test_graphql_subscriptions import stack  # noqa: F401

@pytest.mark.parametrize("tasks,blob", [(500, 0), (500, 450_000), (100, 450_000), (500, 50_000)])
async def test_probe(stack, tasks, blob):
    ctx = {"blob": secrets.token_hex(blob)} if blob else {}
    t0 = time.monotonic()
    eid = await stack.start([{"id": f"t{i}", "name": f"t{i}"} for i in range(tasks)], initialContext=ctx)
    try:
        body = await stack.operator.wait_status(eid, timeout=60)
        print("PROBE", stack.kind, tasks, blob, body["status"], round(time.monotonic() - t0, 1))
    except AssertionError:
        print("PROBE", stack.kind, tasks, blob, "STUCK after 60s")
