//! Kernel control sockets (`ctl_register`, xnu bsd/sys/kern_control.h).

#[derive(Debug, Clone)]
pub struct CtlReg {
    pub id: u64,
    pub name: String,
    pub flags: u32,
    pub ctl_id: u32,
    pub connect: u64,
    pub disconnect: u64,
    pub send: u64,
    pub setopt: u64,
    pub getopt: u64,
    pub userdata: u64,
    /// Connected clients: unit → unitinfo.
    pub clients: Vec<(u32, u64)>,
    pub registered: bool,
}

#[derive(Debug, Default)]
pub struct Controls {
    pub regs: Vec<CtlReg>,
    /// Data each (registration id, unit) has enqueued for its client.
    pub enqueued: Vec<(u64, u32, Vec<u8>)>,
}

impl Controls {
    pub fn live(&self) -> Vec<&CtlReg> {
        self.regs.iter().filter(|r| r.registered).collect()
    }
}
