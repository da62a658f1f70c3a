import PersistenceService
import ServiceKit

let logger = ServiceLogging.logger(label: "chat.persistence")
let application = try await buildApplication(.fromEnvironment(), logger: logger)
try await application.run()
