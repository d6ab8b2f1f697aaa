using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Ferry.Quic.Internal;

namespace Ferry.Quic.Tests;

/// <summary>Linux recvmmsg/sendmmsg with GSO and GRO, each on and off: every datagram arrives intact, whole and in order.</summary>
public sealed class BatchedIoTests : QuicTestBase
{
    [Theory]
    [InlineData(true, true)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    [InlineData(false, false)]
    public unsafe void Batches_deliver_every_datagram_intact_and_in_order(bool gso, bool gro)
    {
        Assert.SkipUnless(UdpBatchIo.IsSupported, "batched UDP I/O is Linux-only");
        using var txSocket = Bound();
        using var rxSocket = Bound();
        using var tx = new UdpBatchIo(txSocket, 1 << 20, useGso: gso, useGro: false);
        using var rx = new UdpBatchIo(rxSocket, 4 << 20, useGso: false, useGro: gro);
        var to = new NativeAddress((IPEndPoint)rxSocket.LocalEndPoint!);
        var from = new NativeAddress((IPEndPoint)txSocket.LocalEndPoint!);

        // Runs of equal sizes (one GSO message each, the last one shorter) mixed with odd sizes that end a run.
        const int Count = 300;
        var sizes = Enumerable.Range(0, Count).Select(i => (i % 50) switch { < 40 => 1452, 40 => 37, < 45 => 1200, _ => 9 + (i % 7) }).ToArray();
        var buffer = GC.AllocateArray<byte>(sizes.Sum(), pinned: true);
        RandomNumberGenerator.Fill(buffer);
        var packets = new OutgoingPacket[Count];
        byte* basePtr = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(buffer));
        for (int i = 0, offset = 0; i < Count; offset += sizes[i], i++)
        {
            BinaryPrimitives.WriteInt32LittleEndian(buffer.AsSpan(offset), i);
            packets[i] = new OutgoingPacket((nint)(basePtr + offset), sizes[i], to);
        }

        Assert.Equal(Count, tx.Send(packets));

        var receiver = new Collector(from);
        var deadline = DateTime.UtcNow + Timeout;
        while (receiver.Datagrams.Count < Count && DateTime.UtcNow < deadline)
        {
            Assert.True(rx.Receive(receiver) >= 0, "the receive socket failed");
        }

        Assert.Equal(Count, receiver.Datagrams.Count);
        Assert.Equal(Enumerable.Range(0, Count), receiver.Datagrams.Select(d => BinaryPrimitives.ReadInt32LittleEndian(d)));
        Assert.Equal(SHA256.HashData(buffer), SHA256.HashData(receiver.Datagrams.SelectMany(d => d).ToArray()));
        Assert.True(receiver.Batches > 0 && receiver.ForeignSenders == 0);
        Assert.True(rx.ReceiveBufferSize >= 2 << 20, $"receive buffer only {rx.ReceiveBufferSize} bytes");
    }

    [Fact]
    public async Task Portable_socket_loops_still_carry_a_stream_intact()
    {
        // The non-Linux path (and the fallback when batching is off) must keep working on its own.
        var server = Track(QuicEndpoint.Bind(new QuicEndpointOptions
        {
            LocalEndPoint = new IPEndPoint(IPAddress.Loopback, 0),
            ServerTls = new QuicTlsOptions { Certificate = Pki.Issue("server.ferry"), TrustedCa = Pki.Ca },
            DisableBatchedIo = true,
        }));
        var client = Track(QuicEndpoint.Bind(new QuicEndpointOptions { LocalEndPoint = new IPEndPoint(IPAddress.Loopback, 0), DisableBatchedIo = true }));
        var accept = server.AcceptConnectionAsync(Ct).AsTask();
        var c = Track(await client.ConnectAsync(server.LocalEndPoint, ClientTls(), null, Ct).AsTask().WaitAsync(Timeout, Ct));
        var s = Track(await accept.WaitAsync(Timeout, Ct));

        var payload = RandomNumberGenerator.GetBytes(8 << 20);
        await using var stream = await c.OpenBidirectionalStreamAsync(Ct).AsTask().WaitAsync(Timeout, Ct);
        var write = Task.Run(async () =>
        {
            await stream.WriteAsync(payload, completeWrites: true, Ct).AsTask().WaitAsync(Timeout, Ct);
        }, Ct);
        await using var accepted = await s.AcceptStreamAsync(Ct).AsTask().WaitAsync(Timeout, Ct);
        using var received = new MemoryStream();
        await accepted.CopyToAsync(received, Ct).WaitAsync(Timeout, Ct);
        await write.WaitAsync(Timeout, Ct);
        Assert.Equal(SHA256.HashData(payload), SHA256.HashData(received.ToArray()));
    }

    private static Socket Bound()
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return socket;
    }

    private sealed class Collector(NativeAddress expectedSender) : IDatagramReceiver
    {
        public List<byte[]> Datagrams { get; } = [];

        public int Batches { get; private set; }

        public int ForeignSenders { get; private set; }

        public void OnDatagram(ReadOnlySpan<byte> datagram, ReadOnlySpan<byte> sockaddr)
        {
            Datagrams.Add(datagram.ToArray());
            if (!expectedSender.Matches(sockaddr))
            {
                ForeignSenders++;
            }
        }

        public void OnBatchEnd() => Batches++;
    }
}
