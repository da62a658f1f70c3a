/// `/consult/`: log in as a shop owner or a visitor (through the development token endpoint, or by pasting a
/// token), see your rooms with unread counts, open one, chat, and see the other side's read receipt.
/// Every text from the server is inserted with `textContent`, never as HTML.
enum ConsultPage {
    /// `Resources/consult.html`, compiled into the binary (`.embedInCode`), so a deployed gateway is one file.
    static let html = String(decoding: PackageResources.consult_html, as: UTF8.self)
}
