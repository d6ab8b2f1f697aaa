using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Security.Cryptography;

namespace Ferry.Relay.Tests.Support;

/// <summary>Makes numbered random packets and checks received ones byte for byte through a SHA-256 of each.</summary>
internal sealed class PacketLedger(int seed)
{
    private readonly Random _random = new(seed);
    private readonly ConcurrentDictionary<int, (int Length, byte[] Hash)> _sent = new();
    private readonly ConcurrentDictionary<int, bool> _received = new();
    private int _next;

    public int Sent => _sent.Count;

    public int Received => _received.Count;

    /// <summary>A packet of <paramref name="length"/> bytes (at least 4): sequence number then random bytes.</summary>
    public byte[] Next(int length)
    {
        var packet = new byte[Math.Max(4, length)];
        lock (_random)
        {
            _random.NextBytes(packet);
        }

        var sequence = Interlocked.Increment(ref _next);
        BinaryPrimitives.WriteInt32BigEndian(packet, sequence);
        _sent[sequence] = (packet.Length, SHA256.HashData(packet));
        return packet;
    }

    /// <summary>A size mix like QUIC's: mostly around 1200 bytes, some tiny, some up to the 64 KiB limit.</summary>
    public int NextLength()
    {
        lock (_random)
        {
            return _random.Next(10) switch
            {
                0 => _random.Next(4, 64),
                1 => _random.Next(1200, RelayFrameCodec.MaxPacketLength + 1),
                _ => _random.Next(1000, 1400),
            };
        }
    }

    /// <summary>Checks a received packet against what was sent; false for corruption, duplicates or unknown packets.</summary>
    public bool Accept(ReadOnlySpan<byte> packet)
    {
        if (packet.Length < 4)
        {
            return false;
        }

        var sequence = BinaryPrimitives.ReadInt32BigEndian(packet);
        return _sent.TryGetValue(sequence, out var expected)
            && expected.Length == packet.Length
            && SHA256.HashData(packet).AsSpan().SequenceEqual(expected.Hash)
            && _received.TryAdd(sequence, true);
    }
}
