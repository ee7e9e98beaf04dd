use super::*;

#[test]
fn varints_are_little_endian_base_128() {
    let mut b = Vec::new();
    put_varint(&mut b, 1);
    put_varint(&mut b, 300);
    put_varint(&mut b, u64::MAX);
    assert_eq!(b[..3], [1, 0xac, 0x02]);
    assert_eq!(b.len(), 3 + 10);
    b.clear();
    put_uint(&mut b, PACKET_TIMESTAMP_CLOCK_ID, 3);
    assert_eq!(b, [0xd0, 0x03, 3]);
}
