//! Traffic scenarios (to be filled in).
pub fn socket_connect() -> bool {
    super::scenario::step("socket-connect", false, "not implemented yet");
    false
}
pub fn ip_tcp() -> bool {
    super::scenario::step("ip-tcp", false, "not implemented yet");
    false
}
