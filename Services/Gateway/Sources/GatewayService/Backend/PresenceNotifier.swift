import ChannelLayer
import NIOCore
import ServiceKit
import ServiceLifecycle

/// Sends each room's presence to this gateway's sockets in it whenever it changes, at most once a second per
/// room (a joining socket gets the current one at once, see ``ChatSocketHandler``), and forgets other gateways
/// that stopped sending heartbeats.
struct PresenceNotifier: Service {
    let backend: GatewayBackend

    func run() async throws {
        var lastSent: [String: String] = [:]
        while await sleepUntilShutdown(for: .seconds(1)) {
            for gateway in backend.presence.expire() {
                backend.logger.info("gateway expired; its members leave the presence counts", metadata: ["chat.peer_gateway": "\(gateway)"])
            }
            let hub = backend.hub
            var current: [String: String] = [:]
            for group in hub.memberCounts().keys {
                let frame = backend.presenceFrame(group)
                current[group] = frame
                if lastSent[group] != frame {
                    _ = hub.dispatch(ChannelMessage(body: ByteBuffer(string: frame), group: group), to: group)
                }
            }
            lastSent = current
        }
    }
}
