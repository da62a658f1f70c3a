import PersistenceService
import ServiceKit

let logger = ServiceLogging.logger(label: "chat.persistence")
await ServiceLogging.runMain(logger) {
    let application = try await buildApplication(try .fromEnvironment(), logger: logger)
    try await application.run()
}
