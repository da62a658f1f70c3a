/// `/consult/`: log in as a shop owner or a visitor (through the development token endpoint, or by pasting a
/// token), see your rooms with unread counts, open one, chat, and see the other side's read receipt.
/// Every text from the server is inserted with `textContent`, never as HTML.
enum ConsultPage {
    static let html = """
        <!DOCTYPE html>
        <html>
        <head>
            <meta charset="utf-8"/>
            <title>Consultations</title>
            <style>
                body { font-family: sans-serif; margin: 1.5em; max-width: 60em; }
                #rooms-view, #chat-view { display: none; }
                #room-list li { cursor: pointer; padding: .3em 0; }
                .unread { background: #c00; color: #fff; border-radius: 1em; padding: 0 .5em; margin-left: .5em; }
                .unread:empty, .unread[data-count="0"] { display: none; }
                #chat-log { border: 1px solid #ccc; height: 20em; overflow-y: auto; padding: .5em; }
                .msg .who { font-weight: bold; margin-right: .5em; }
                .error { color: #c00; }
                #read-receipt { color: #666; font-size: .9em; }
            </style>
        </head>
        <body>
            <section id="login-view">
                <h1>Consultations</h1>
                <label>Email <input id="login-email" type="email" size="40"></label>
                <label>I am a <select id="login-role"><option value="visitor">visitor</option><option value="shop">shop owner</option></select></label>
                <input id="login-submit" type="button" value="Log in">
                <p><small>Or paste a token: <input id="login-token" type="text" size="40"> <input id="login-token-submit" type="button" value="Use token"></small></p>
                <p id="login-error" class="error"></p>
            </section>
            <section id="rooms-view">
                <p>Logged in as <span id="whoami"></span> (<a href="#" id="logout">log out</a>)</p>
                <h2>Your rooms</h2>
                <ul id="room-list"></ul>
                <p><label><span id="new-room-label">Visitor email</span> <input id="new-room-email" type="email" size="40"></label>
                   <input id="new-room-submit" type="button" value="Open a room"></p>
                <p id="rooms-error" class="error"></p>
            </section>
            <section id="chat-view">
                <p><a href="#" id="back-to-rooms">&larr; rooms</a> &middot; <span id="chat-title"></span></p>
                <div id="chat-log"></div>
                <input id="chat-message-input" type="text" size="80">
                <input id="chat-message-submit" type="button" value="Send">
                <p id="read-receipt"></p>
                <p id="presence"></p>
            </section>
            <script>
            (function () {
                const $ = (id) => document.getElementById(id);
                let me = JSON.parse(sessionStorage.getItem('consult-me') || 'null');
                let socket = null, current = null, refreshTimer = null;

                function show(view) {
                    for (const v of ['login-view', 'rooms-view', 'chat-view']) $(v).style.display = (v === view ? 'block' : 'none');
                }
                async function api(method, path, body) {
                    const response = await fetch(path, {
                        method, headers: Object.assign({'Content-Type': 'application/json'}, me ? {'Authorization': 'Bearer ' + me.token} : {}),
                        body: body ? JSON.stringify(body) : undefined,
                    });
                    const data = await response.json();
                    if (!response.ok) throw new Error(data.error || ('HTTP ' + response.status));
                    return data;
                }
                function claims(token) {
                    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
                    return JSON.parse(atob(part));
                }
                function login(token) {
                    const c = claims(token);
                    me = {token, email: c.sub, role: c.role};
                    sessionStorage.setItem('consult-me', JSON.stringify(me));
                    openRooms();
                }
                $('login-submit').onclick = async () => {
                    try {
                        const data = await api('POST', '/api/dev/token', {email: $('login-email').value, role: $('login-role').value});
                        login(data.token);
                    } catch (e) { $('login-error').textContent = e.message; }
                };
                $('login-token-submit').onclick = () => {
                    try { login($('login-token').value.trim()); } catch (e) { $('login-error').textContent = 'not a token'; }
                };
                $('logout').onclick = (e) => { e.preventDefault(); sessionStorage.removeItem('consult-me'); me = null; closeSocket(); show('login-view'); };

                function other(room) { return me.role === 'shop' ? room.visitor_user_email : room.shop_user_email; }

                async function refreshRooms() {
                    try {
                        const data = await api('GET', '/api/rooms');
                        const list = $('room-list');
                        list.replaceChildren();
                        for (const room of data.rooms) {
                            const li = document.createElement('li');
                            li.className = 'room';
                            li.dataset.roomId = room.id;
                            const name = document.createElement('span');
                            name.className = 'room-name';
                            name.textContent = other(room) + (room.last_message ? ' — ' + room.last_message.message : '');
                            const unread = document.createElement('span');
                            unread.className = 'unread';
                            unread.dataset.count = room.unread_count;
                            unread.textContent = room.unread_count;
                            li.append(name, unread);
                            li.onclick = () => openChat(room);
                            list.append(li);
                        }
                        $('rooms-error').textContent = '';
                    } catch (e) { $('rooms-error').textContent = e.message; }
                }
                function openRooms() {
                    closeSocket();
                    $('whoami').textContent = me.email + ' as ' + me.role;
                    $('new-room-label').textContent = me.role === 'shop' ? 'Visitor email' : 'Shop email';
                    show('rooms-view');
                    refreshRooms();
                    refreshTimer = setInterval(refreshRooms, 2000);
                }
                $('new-room-submit').onclick = async () => {
                    const email = $('new-room-email').value;
                    const pair = me.role === 'shop' ? {shop_user_email: me.email, visitor_user_email: email}
                                                    : {shop_user_email: email, visitor_user_email: me.email};
                    try { await api('POST', '/api/rooms', pair); $('new-room-email').value = ''; refreshRooms(); }
                    catch (e) { $('rooms-error').textContent = e.message; }
                };
                $('back-to-rooms').onclick = (e) => { e.preventDefault(); openRooms(); };

                function closeSocket() {
                    if (refreshTimer) { clearInterval(refreshTimer); refreshTimer = null; }
                    if (socket) { socket.onclose = null; socket.close(); socket = null; }
                }
                function appendLine(who, text, cls) {
                    const line = document.createElement('div');
                    line.className = cls;
                    const w = document.createElement('span');
                    w.className = 'who';
                    w.textContent = who;
                    const t = document.createElement('span');
                    t.className = 'text';
                    t.textContent = text;
                    line.append(w, t);
                    $('chat-log').append(line);
                    $('chat-log').scrollTop = $('chat-log').scrollHeight;
                }
                function openChat(room) {
                    closeSocket();
                    current = room;
                    $('chat-log').replaceChildren();
                    $('read-receipt').textContent = '';
                    $('chat-title').textContent = 'with ' + other(room);
                    show('chat-view');
                    const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
                    socket = new WebSocket(scheme + location.host + '/ws/room/' + room.id + '/messages?token=' + encodeURIComponent(me.token));
                    let lastSeen = 0;
                    socket.onmessage = (e) => {
                        const data = JSON.parse(e.data);
                        if (data.error !== undefined) { appendLine('error', data.error, 'msg error'); return; }
                        if (data.type === 'presence') { $('presence').textContent = 'Online: ' + data.online.join(', '); return; }
                        if (data.type === 'read') {
                            if (data.reader_email !== me.email) $('read-receipt').textContent = 'Read by ' + data.reader_email + ' up to #' + data.up_to_seq;
                            return;
                        }
                        appendLine(data.sender_email === me.email ? 'me' : data.sender_email, data.message, 'msg');
                        lastSeen = Math.max(lastSeen, data.seq);
                        if (data.sender_email !== me.email && document.visibilityState !== 'hidden') {
                            socket.send(JSON.stringify({type: 'read', up_to_seq: lastSeen}));
                        }
                    };
                    socket.onclose = (e) => appendLine('closed', (e.reason || 'connection closed') + ' (' + e.code + ')', 'msg error');
                    $('chat-message-input').focus();
                }
                $('chat-message-input').onkeyup = (e) => { if (e.key === 'Enter') $('chat-message-submit').click(); };
                $('chat-message-submit').onclick = () => {
                    const input = $('chat-message-input');
                    if (!socket || !current) return;
                    socket.send(JSON.stringify({
                        message: input.value, sender_email: me.email,
                        shop_user_email: current.shop_user_email, visitor_user_email: current.visitor_user_email,
                    }));
                    input.value = '';
                };
                if (me) openRooms(); else show('login-view');
            })();
            </script>
        </body>
        </html>
        """
}
