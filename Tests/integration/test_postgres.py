"""The same chat with PostgreSQL as the database of both the persistence and the room service."""
from conftest import Client, Stack, psql, run, unique_room


def test_messages_and_rooms_are_stored_in_postgresql():
    stack = Stack("pg", database="postgres").start()
    try:
        room = unique_room("pg")

        async def scenario():
            a = await Client.connect(stack.ws_url(room))
            b = await Client.connect(stack.ws_url(room))
            for i in range(30):
                await a.send(f"pg {i}")
            got = await b.recv_messages(30)
            assert [f["seq"] for f in got] == list(range(1, 31))
            late = await Client.connect(stack.ws_url(room))
            history = await late.recv_messages(30)
            assert [f["message"] for f in history] == [f"pg {i}" for i in range(30)]
            for c in (a, b, late):
                await c.close()

        run(scenario())
        assert stack.stored(room) == [(i + 1, f"pg {i}") for i in range(30)]
        assert psql(stack.pg_url, f"SELECT name FROM chat_rooms WHERE kind = 'named' AND name = '{room}'") == [[room]]
        assert psql(stack.pg_url, "SELECT component, version FROM chat_schema ORDER BY component") == [["messages", "1"], ["rooms", "1"]]
    finally:
        stack.stop()
