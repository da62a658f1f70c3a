import ChatProtocol
import Hummingbird

/// The tutorial's two pages, with its element ids. The room name reaches the page's script only as a JSON
/// string inside a `type="application/json"` element (like Django's `json_script`), with `<`, `>` and `&`
/// escaped, so no room name can close the element or run script; everywhere else it is HTML-escaped.
enum Pages {
    static func add<Context: RequestContext>(to router: Router<Context>) {
        router.get("/") { _, _ in Response(status: .seeOther, headers: [.location: "/chat/"]) }
        router.get("/chat") { _, _ in html(.ok, indexPage) }
        router.get("/consult") { _, _ in html(.ok, ConsultPage.html) }
        router.get("/chat/:room") { _, context -> Response in
            let raw = context.parameters.get("room") ?? ""
            do throws(ChatError) {
                let room = try RoomName(validating: raw.removingPercentEncoding ?? raw)
                return html(.ok, roomPage(room))
            } catch {
                return html(.badRequest, errorPage(error.description))
            }
        }
    }

    static func html(_ status: HTTPResponse.Status, _ body: String) -> Response {
        Response(status: status, headers: [.contentType: "text/html; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: body)))
    }

    static func escapeHTML(_ text: String) -> String {
        var out = ""
        for c in text {
            switch c {
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "&": out += "&amp;"
            case "\"": out += "&quot;"
            case "'": out += "&#x27;"
            default: out.append(c)
            }
        }
        return out
    }

    static let indexPage = """
        <!DOCTYPE html>
        <html>
        <head>
            <meta charset="utf-8"/>
            <title>Chat Rooms</title>
        </head>
        <body>
            What chat room would you like to enter?<br>
            <input id="room-name-input" type="text" size="100"><br>
            <input id="room-name-submit" type="button" value="Enter">

            <script>
                document.querySelector('#room-name-input').focus();
                document.querySelector('#room-name-input').onkeyup = function(e) {
                    if (e.key === 'Enter') {  // enter, return
                        document.querySelector('#room-name-submit').click();
                    }
                };

                document.querySelector('#room-name-submit').onclick = function(e) {
                    var roomName = document.querySelector('#room-name-input').value;
                    window.location.pathname = '/chat/' + encodeURIComponent(roomName) + '/';
                };
            </script>
        </body>
        </html>
        """

    static func roomPage(_ room: RoomName) -> String {
        """
        <!DOCTYPE html>
        <html>
        <head>
            <meta charset="utf-8"/>
            <title>Chat Room \(escapeHTML(room.value))</title>
        </head>
        <body>
            <p id="presence"></p>
            <textarea id="chat-log" cols="100" rows="20" readonly></textarea><br>
            <input id="chat-message-input" type="text" size="100"><br>
            <input id="chat-message-submit" type="button" value="Send">
            <script id="room-name" type="application/json">\(JSONWriter.quoted(room.value))</script>
            <script>
                const roomName = JSON.parse(document.getElementById('room-name').textContent);
                const scheme = window.location.protocol === 'https:' ? 'wss://' : 'ws://';
                const chatSocket = new WebSocket(
                    scheme + window.location.host + '/ws/chat/' + encodeURIComponent(roomName) + '/'
                );
                const log = document.querySelector('#chat-log');

                chatSocket.onmessage = function(e) {
                    const data = JSON.parse(e.data);
                    if (data.error !== undefined) {
                        log.value += ('[error] ' + data.error + '\\n');
                    } else if (data.type === 'presence') {
                        document.querySelector('#presence').textContent = data.count + (data.count === 1 ? ' person' : ' people') + ' here';
                    } else {
                        log.value += (data.message + '\\n');
                    }
                };

                chatSocket.onclose = function(e) {
                    console.error('Chat socket closed unexpectedly');
                };

                document.querySelector('#chat-message-input').focus();
                document.querySelector('#chat-message-input').onkeyup = function(e) {
                    if (e.key === 'Enter') {  // enter, return
                        document.querySelector('#chat-message-submit').click();
                    }
                };

                document.querySelector('#chat-message-submit').onclick = function(e) {
                    const messageInputDom = document.querySelector('#chat-message-input');
                    const message = messageInputDom.value;
                    chatSocket.send(JSON.stringify({
                        'message': message
                    }));
                    messageInputDom.value = '';
                };
            </script>
        </body>
        </html>
        """
    }

    static func errorPage(_ reason: String) -> String {
        """
        <!DOCTYPE html>
        <html><head><meta charset="utf-8"/><title>Invalid room name</title></head>
        <body><p id="error">Invalid room name: \(escapeHTML(reason))</p><p><a href="/chat/">Back</a></p></body></html>
        """
    }
}
