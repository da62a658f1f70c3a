import RoomService
import ServiceKit

let logger = ServiceLogging.logger(label: "chat.rooms")
await ServiceLogging.runMain(logger) {
    let application = try await buildApplication(try .fromEnvironment(), logger: logger)
    try await application.run()
}
