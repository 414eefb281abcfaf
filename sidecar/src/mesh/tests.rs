use ollama_mesh_consul::ConsulSettings;

use super::*;

#[tokio::test]
async fn a_taken_mesh_port_fails_the_start_naming_the_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = MeshConfig {
        listen: taken.local_addr().unwrap(),
        ollama_host: "127.0.0.1".into(),
        ollama_port: 11434,
    };
    let consul = Client::new(&ConsulSettings::default().validate().unwrap()).unwrap();
    let Err(error) = Mesh::start(&config, "ollama", "127.0.0.1", consul).await else {
        panic!("bound a port that is taken");
    };
    let message = error.to_string();
    assert!(message.starts_with("--mesh-listen: "), "{message}");
    assert!(message.contains(&config.listen.to_string()), "{message}");
}

#[tokio::test]
async fn the_exposure_probe_sees_whether_something_answers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    assert!(answers("127.0.0.1", port).await);
    drop(listener);
    assert!(!answers("127.0.0.1", port).await);
}
