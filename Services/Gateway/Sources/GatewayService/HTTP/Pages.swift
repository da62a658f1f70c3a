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
        router.get("/static/chat-socket.js") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/javascript; charset=utf-8"],
                     body: .init(byteBuffer: ByteBuffer(string: chatSocketScript)))
        }
        router.get("/chat/:room") { _, context -> Response in
            let raw = context.parameters.get("room") ?? ""
            do throws(ChatError) {
                let room = try RoomName(pathSegment: raw)
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

    /// `Resources/room.html` with the room's name put in: HTML-escaped in the title, a JSON string (with `<`,
    /// `>`, `&` escaped) in the `room-name` element.
    static func roomPage(_ room: RoomName) -> String {
        roomTemplate.replacingOccurrences(of: "{{ROOM_TITLE}}", with: escapeHTML(room.value))
            .replacingOccurrences(of: "{{ROOM_JSON}}", with: JSONWriter.quoted(room.value))
    }

    static let roomTemplate = String(decoding: PackageResources.room_html, as: UTF8.self)
    /// The pages' reconnecting, resuming socket (`/static/chat-socket.js`).
    static let chatSocketScript = String(decoding: PackageResources.chat_socket_js, as: UTF8.self)

    static func errorPage(_ reason: String) -> String {
        """
        <!DOCTYPE html>
        <html><head><meta charset="utf-8"/><title>Invalid room name</title></head>
        <body><p id="error">Invalid room name: \(escapeHTML(reason))</p><p><a href="/chat/">Back</a></p></body></html>
        """
    }
}
