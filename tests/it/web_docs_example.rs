//! The browser example of docs/protocol.md ("Writing a client"), run as written
//! in a real headless Chromium on a page of klav's origin: it logs in, shows a
//! message someone else sends, and its form posts exactly once.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;
use crate::support::browser::*;

/// The example's code, marked in docs/protocol.md, with its static import made
/// a dynamic one so that it can run as a function in the page.
fn example() -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md")).unwrap();
    let (_, after) = doc
        .split_once("<!-- klav.js browser example -->\n```js\n")
        .expect("the browser example is marked in docs/protocol.md");
    let code = after.split_once("```").unwrap().0;
    let import = "import { Klav } from \"/klav.js\";";
    assert!(code.contains(import), "the example imports /klav.js");
    format!(
        "(async () => {{ {} }})()",
        code.replace(import, "const { Klav } = await import(\"/klav.js\");")
    )
}

#[test]
fn web_the_browser_example_of_the_docs_runs() {
    let s = TestServer::start();
    // The example logs in as mina with this password.
    assert_eq!(s.register("mina", "s3cret-pass").status, 200);
    let mut joon = s.client("joon");
    let (_one, b) = browser();
    let p = b.new_page(800, 600).unwrap();
    // Any page of klav's origin: the example's `fetch` and `import` are relative.
    p.goto(&format!("http://{}/example", s.addr));
    p.eval(
        "document.body.replaceChildren(); \
         const ul = document.createElement('ul'); ul.id = 'messages'; \
         const form = document.createElement('form'); \
         const input = document.createElement('input'); input.name = 'text'; \
         form.append(input); document.body.append(ul, form); true",
    );
    p.eval(&example());
    p.wait_for("document.title === 'Chat'", "the example to be online");

    // mina's page joined "lobby" by name, so it exists now: joon joins and says hello.
    let room: String = s
        .db()
        .query_one("SELECT id FROM rooms WHERE name = 'lobby'", &[])
        .unwrap()
        .get(0);
    joon.join(&room);
    joon.send(json!({"type": "msg", "room_id": room, "text": "hello, example"}));
    joon.next_of("message"); // joon's own echo
    p.wait_for(
        "[...document.querySelectorAll('#messages li')].some(li => li.textContent.endsWith(': hello, example'))",
        "joon's message in the example's list",
    );

    // The form posts once; joon gets it once.
    p.eval(
        "document.querySelector('input').value = 'from the example'; \
         document.querySelector('form').requestSubmit(); true",
    );
    let got = joon.next_of("message");
    assert_eq!(
        (got["from"].as_str(), got["text"].as_str()),
        (Some("mina"), Some("from the example"))
    );
    for e in joon.drain(Duration::from_millis(500)) {
        assert_ne!(e["text"], "from the example", "posted twice: {e}");
    }
    assert_eq!(
        s.count(
            "SELECT count(*) FROM chat_logs WHERE text = 'from the example'",
            &[]
        ),
        1
    );
    assert_eq!(p.errors(), Vec::<String>::new());
}
