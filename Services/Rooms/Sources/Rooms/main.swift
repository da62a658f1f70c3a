import RoomService
import ServiceKit

let logger = ServiceLogging.logger(label: "chat.rooms")
let application = try await buildApplication(.fromEnvironment(), logger: logger)
try await application.run()
