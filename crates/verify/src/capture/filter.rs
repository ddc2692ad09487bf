//! The kernel-side filter of a capture socket: a classic BPF program (attached with
//! `SO_ATTACH_FILTER`) that decides which frames are queued to the socket at all.
//!
//! It keeps frames that:
//! - arrived on or left the chosen interface (by index), when one is chosen: the packet socket
//!   itself sees every interface of its namespace, and binding it to one would need a
//!   `sockaddr_ll`, which no safe API builds;
//! - carry IPv4 or IPv6 that may hold TCP (UDP, ICMP, ARP and the rest never take buffer
//!   space);
//! - are not the outgoing copy of a loopback packet: a packet sent on `lo` is seen leaving and
//!   again arriving, byte for byte the same, so only the arriving copy is kept.
//!
//! The socket is a cooked one (`SOCK_DGRAM`): what the program sees at offset 0 is the network
//! header, whatever the device's link layer, and the interface, device type, direction and
//! protocol come from the kernel's ancillary loads (`SKF_AD_*`).

use socket2::SockFilter;

// Classic BPF instruction classes and modes (linux/bpf_common.h).
const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const LD_B_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

/// Ancillary loads (linux/filter.h): offsets past `SKF_AD_OFF` (-0x1000) read the skb's
/// metadata instead of its bytes.
const SKF_AD_OFF: u32 = 0xffff_f000;
const SKF_AD_PROTOCOL: u32 = SKF_AD_OFF; // skb->protocol, the ethertype
const SKF_AD_PKTTYPE: u32 = SKF_AD_OFF + 4; // PACKET_HOST, PACKET_OUTGOING, …
const SKF_AD_IFINDEX: u32 = SKF_AD_OFF + 8;
const SKF_AD_HATYPE: u32 = SKF_AD_OFF + 28; // the device's ARPHRD_* type

const ARPHRD_LOOPBACK: u32 = 772;
const PACKET_OUTGOING: u32 = 4;
const ETHERTYPE_IPV4: u32 = 0x0800;
const ETHERTYPE_IPV6: u32 = 0x86dd;
const PROTO_TCP: u32 = 6;
const PROTO_UDP: u32 = 17;
const PROTO_ICMPV6: u32 = 58;
const IPV6_HOP_BY_HOP: u32 = 0;

/// Keep the whole frame; the receive buffer and `MSG_TRUNC` bound what is copied.
const ACCEPT: u32 = u32::MAX;
const DROP: u32 = 0;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

impl Insn {
    pub(super) fn to_sock_filter(self) -> SockFilter {
        SockFilter::new(self.code, self.jt, self.jf, self.k)
    }
}

/// The program for a capture on interface `ifindex` (every interface when `None`).
pub(super) fn program(ifindex: Option<u32>) -> Vec<Insn> {
    use Label::{Accept, Drop, HopByHop, Ipv4, Ipv6, Next, Protocol};
    let mut ops = Vec::new();
    if let Some(index) = ifindex {
        ops.extend([Op::Load(SKF_AD_IFINDEX), Op::JumpIf(index, Next, Drop)]);
    }
    ops.extend([
        Op::Load(SKF_AD_HATYPE),
        Op::JumpIf(ARPHRD_LOOPBACK, Next, Protocol),
        Op::Load(SKF_AD_PKTTYPE),
        Op::JumpIf(PACKET_OUTGOING, Drop, Protocol),
        Op::Mark(Protocol),
        Op::Load(SKF_AD_PROTOCOL),
        Op::JumpIf(ETHERTYPE_IPV4, Ipv4, Next),
        Op::JumpIf(ETHERTYPE_IPV6, Ipv6, Drop),
        Op::Mark(Ipv4),
        Op::LoadByte(9), // the protocol field
        Op::JumpIf(PROTO_TCP, Accept, Drop),
        Op::Mark(Ipv6),
        // The next-header field: TCP, or an extension header that may lead to it. Behind a
        // hop-by-hop header (multicast listener reports, flooded to every bridge port, carry
        // one) the next one decides.
        Op::LoadByte(6),
        Op::JumpIf(IPV6_HOP_BY_HOP, HopByHop, Next),
        Op::JumpIf(PROTO_UDP, Drop, Next),
        Op::JumpIf(PROTO_ICMPV6, Drop, Accept),
        Op::Mark(HopByHop),
        Op::LoadByte(40),
        Op::JumpIf(PROTO_UDP, Drop, Next),
        Op::JumpIf(PROTO_ICMPV6, Drop, Accept),
        Op::Mark(Accept),
        Op::Return(ACCEPT),
        Op::Mark(Drop),
        Op::Return(DROP),
    ]);
    assemble(&ops)
}

// === a small assembler: forward jumps to labels ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    /// The instruction right after the jump.
    Next,
    Protocol,
    Ipv4,
    Ipv6,
    HopByHop,
    Accept,
    Drop,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    /// Loads a 32-bit word at an absolute offset (here: always an ancillary one).
    Load(u32),
    /// Loads the byte at an absolute offset of the frame.
    LoadByte(u32),
    /// Jumps to the first label when the accumulator equals the value, else to the second.
    JumpIf(u32, Label, Label),
    Return(u32),
    /// Names the position of the next instruction.
    Mark(Label),
}

/// Resolves labels into relative jumps. The programs are fixed and every jump is forward and
/// short, so a label that is missing or behind its jump is a bug in [`program`], which the
/// debug assertion makes the unit tests catch.
fn assemble(ops: &[Op]) -> Vec<Insn> {
    let mut marks = Vec::new();
    let mut position = 0usize;
    for op in ops {
        match op {
            Op::Mark(label) => marks.push((*label, position)),
            _ => position += 1,
        }
    }
    let mut insns = Vec::with_capacity(position);
    for op in ops {
        let at = insns.len();
        let offset = |label: Label| -> u8 {
            if label == Label::Next {
                return 0;
            }
            let target = marks.iter().find(|(l, _)| *l == label).map(|(_, p)| *p);
            debug_assert!(
                target.is_some_and(|t| t > at && t - at - 1 <= usize::from(u8::MAX)),
                "jump from {at} to {label:?} is not a short forward jump"
            );
            let target = target.unwrap_or(at + 1);
            u8::try_from(target.saturating_sub(at + 1)).unwrap_or(u8::MAX)
        };
        let insn = match *op {
            Op::Load(k) => Insn {
                code: LD_W_ABS,
                jt: 0,
                jf: 0,
                k,
            },
            Op::LoadByte(k) => Insn {
                code: LD_B_ABS,
                jt: 0,
                jf: 0,
                k,
            },
            Op::JumpIf(k, yes, no) => Insn {
                code: JEQ_K,
                jt: offset(yes),
                jf: offset(no),
                k,
            },
            Op::Return(k) => Insn {
                code: RET_K,
                jt: 0,
                jf: 0,
                k,
            },
            Op::Mark(_) => continue,
        };
        insns.push(insn);
    }
    insns
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel knows about a frame, and its bytes from the network header on.
    struct Frame {
        ifindex: u32,
        hatype: u32,
        pkttype: u32,
        protocol: u32,
        data: Vec<u8>,
    }

    const ARPHRD_ETHER: u32 = 1;
    const PACKET_HOST: u32 = 0;
    const PACKET_OTHERHOST: u32 = 3;

    fn ipv4(protocol: u8) -> Frame {
        let mut data = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 64, protocol];
        data.resize(40, 0);
        Frame {
            ifindex: 3,
            hatype: ARPHRD_ETHER,
            pkttype: PACKET_OTHERHOST,
            protocol: ETHERTYPE_IPV4,
            data,
        }
    }

    fn ipv6(next_header: u8) -> Frame {
        let mut data = vec![0x60, 0, 0, 0, 0, 20, next_header, 64];
        data.resize(68, 0);
        Frame {
            protocol: ETHERTYPE_IPV6,
            data,
            ..ipv4(0)
        }
    }

    /// Runs `program` on `frame` as the kernel would, for the instructions it uses: loads past
    /// the frame's end end the program with 0 (drop).
    fn run(program: &[Insn], frame: &Frame) -> u32 {
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let insn = program[pc];
            pc += 1;
            match insn.code {
                LD_W_ABS => {
                    acc = match insn.k {
                        SKF_AD_PROTOCOL => frame.protocol,
                        SKF_AD_PKTTYPE => frame.pkttype,
                        SKF_AD_IFINDEX => frame.ifindex,
                        SKF_AD_HATYPE => frame.hatype,
                        k => panic!("unexpected word load at {k:#x}"),
                    }
                }
                LD_B_ABS => match frame.data.get(insn.k as usize) {
                    Some(byte) => acc = u32::from(*byte),
                    None => return 0,
                },
                JEQ_K => {
                    let skip = if acc == insn.k { insn.jt } else { insn.jf };
                    pc += usize::from(skip);
                }
                RET_K => return insn.k,
                code => panic!("unexpected opcode {code:#x}"),
            }
        }
    }

    #[test]
    fn keeps_tcp_over_ipv4_and_ipv6_only() {
        let any = program(None);
        assert_eq!(run(&any, &ipv4(6)), ACCEPT);
        assert_eq!(run(&any, &ipv4(17)), DROP);
        assert_eq!(run(&any, &ipv4(1)), DROP);
        assert_eq!(run(&any, &ipv6(6)), ACCEPT);
        // Behind a hop-by-hop header, the header after it decides.
        let hop_by_hop = |next: u8| {
            let mut frame = ipv6(0);
            frame.data[40] = next;
            frame
        };
        assert_eq!(run(&any, &hop_by_hop(6)), ACCEPT);
        assert_eq!(run(&any, &hop_by_hop(60)), ACCEPT);
        assert_eq!(run(&any, &hop_by_hop(58)), DROP);
        assert_eq!(run(&any, &hop_by_hop(17)), DROP);
        // A routing header may lead to TCP: kept, the reader walks the chain.
        assert_eq!(run(&any, &ipv6(43)), ACCEPT);
        assert_eq!(run(&any, &ipv6(17)), DROP);
        assert_eq!(run(&any, &ipv6(58)), DROP);
        let arp = Frame {
            protocol: 0x0806,
            ..ipv4(6)
        };
        assert_eq!(run(&any, &arp), DROP);
        let cut = Frame {
            data: vec![0x45, 0],
            ..ipv4(6)
        };
        assert_eq!(run(&any, &cut), DROP);
    }

    #[test]
    fn keeps_only_the_chosen_interface() {
        let on_3 = program(Some(3));
        assert_eq!(run(&on_3, &ipv4(6)), ACCEPT);
        let elsewhere = Frame {
            ifindex: 4,
            ..ipv4(6)
        };
        assert_eq!(run(&on_3, &elsewhere), DROP);
        assert_eq!(run(&program(None), &elsewhere), ACCEPT);
    }

    #[test]
    fn keeps_one_copy_of_loopback_packets_and_both_directions_elsewhere() {
        let any = program(None);
        let lo = |pkttype| Frame {
            ifindex: 1,
            hatype: ARPHRD_LOOPBACK,
            pkttype,
            ..ipv4(6)
        };
        assert_eq!(run(&any, &lo(PACKET_OUTGOING)), DROP);
        assert_eq!(run(&any, &lo(PACKET_HOST)), ACCEPT);
        let leaving_a_veth = Frame {
            pkttype: PACKET_OUTGOING,
            ..ipv4(6)
        };
        assert_eq!(run(&any, &leaving_a_veth), ACCEPT);
        assert_eq!(run(&program(Some(1)), &lo(PACKET_HOST)), ACCEPT);
    }

    #[test]
    fn every_jump_lands_inside_the_program() {
        for program in [program(None), program(Some(7))] {
            for (at, insn) in program.iter().enumerate() {
                if insn.code == JEQ_K {
                    for skip in [insn.jt, insn.jf] {
                        assert!(at + 1 + usize::from(skip) < program.len(), "{program:?}");
                    }
                }
            }
            assert_eq!(program.last().map(|i| i.code), Some(RET_K));
        }
    }
}
