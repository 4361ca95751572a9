use super::*;

fn header(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap()
}

#[test]
fn the_authorization_header_is_read_as_rfc_6750_says() {
    let tokens = Tokens::from_value(Secret::new("abc.DEF-123")).unwrap();
    let cases: [(&str, Option<&str>, bool); 8] = [
        ("the token", Some("Bearer abc.DEF-123"), true),
        ("the scheme in any case", Some("bearer abc.DEF-123"), true),
        ("spaces after the token", Some("Bearer abc.DEF-123  "), true),
        ("no header", None, false),
        ("another scheme", Some("Basic abc.DEF-123"), false),
        ("a prefix of the token", Some("Bearer abc"), false),
        ("the token and more", Some("Bearer abc.DEF-1234"), false),
        ("the scheme alone", Some("Bearer "), false),
    ];
    for (why, value, admitted) in cases {
        let value = value.map(header);
        assert_eq!(tokens.admits(value.as_ref()), admitted, "{why}");
    }
}

#[test]
fn a_file_holds_several_tokens_and_is_read_again_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, "# rotated on Mondays\nold-token\n\nnew-token\n").unwrap();
    let tokens = Tokens::load(&TokenSource::File(path.clone())).unwrap();
    assert_eq!(tokens.len(), 2);
    assert!(tokens.admits(Some(&header("Bearer old-token"))));
    assert!(tokens.admits(Some(&header("Bearer new-token"))));
    assert!(
        !tokens.reload_if_changed().unwrap(),
        "unchanged: not read again"
    );

    std::fs::write(&path, "new-token\n").unwrap();
    assert!(tokens.reload_if_changed().unwrap());
    assert!(!tokens.admits(Some(&header("Bearer old-token"))), "removed");
    assert!(tokens.admits(Some(&header("Bearer new-token"))));

    // A file emptied by mistake changes nothing.
    std::fs::write(&path, "# nothing here\n").unwrap();
    let error = tokens.reload_if_changed().unwrap_err();
    assert!(error.to_string().contains("holds no token"), "{error}");
    assert!(
        tokens.admits(Some(&header("Bearer new-token"))),
        "still in force"
    );
    assert!(
        !tokens.reload_if_changed().unwrap(),
        "the same bad file is told once"
    );
    std::fs::remove_file(&path).unwrap();
    assert!(
        tokens.reload_if_changed().is_err(),
        "a removed file is told"
    );
    assert!(!tokens.reload_if_changed().unwrap(), "once");
    assert!(
        tokens.admits(Some(&header("Bearer new-token"))),
        "still in force"
    );
}

#[test]
fn bad_token_sources_are_refused_without_showing_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, "good\nhas space\n").unwrap();
    let error = Tokens::load(&TokenSource::File(path.clone()))
        .unwrap_err()
        .to_string();
    assert!(error.contains("line 2"), "{error}");
    assert!(
        !error.contains("has space"),
        "the token is not in the message: {error}"
    );
    let missing = Tokens::load(&TokenSource::File(dir.path().join("missing")))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("cannot read the token file"), "{missing}");
    assert!(Tokens::from_value(Secret::new("  ")).is_err(), "blank");
}
