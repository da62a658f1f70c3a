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
        assert psql(stack.pg_url, "SELECT component, MAX(version) FROM chat_schema GROUP BY component ORDER BY component") == [
            ["messages", "3"], ["rooms", "5"]]
        tables = {r[0] for r in psql(stack.pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"chat_messages", "chat_rooms", "chat_shop_users", "chat_visitor_users", "chat_consult_rooms", "chat_read_marks"} <= tables
    finally:
        stack.stop()


def test_consultation_rooms_in_postgresql():
    from consult import Api, consult_socket, message
    stack = Stack("pgconsult", database="postgres").start()
    try:
        api = Api(stack.url)
        shop, visitor = "Shop@Example.com", "visitor@example.com"
        token = api.token(visitor, "visitor")
        room = api.create_room(token, shop, visitor).json()
        assert api.create_room(token, shop.lower(), visitor).status_code == 200

        async def scenario():
            c = await consult_socket(stack, room["id"], token)
            await c.ws.send(message("stored in postgres", shop, visitor))
            assert (await c.recv_messages(1))[0]["sender_email"] == visitor
            await c.close()

        run(scenario())
        assert psql(stack.pg_url, f"SELECT sender, body FROM chat_messages WHERE grp = 'consult:{room['id']}'") == [[visitor, "stored in postgres"]]
        assert psql(stack.pg_url, "SELECT email FROM chat_shop_users") == [["shop@example.com"]]
    finally:
        stack.stop()
