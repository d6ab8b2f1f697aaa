using System.Buffers.Binary;
using System.Diagnostics;
using System.Runtime.InteropServices;

namespace Ferry.NetworkTests.Infrastructure;

/// <summary>What <see cref="NfQueueImpairment"/> does to each packet: netem's loss, delay, jitter and reorder, in netem's sense.</summary>
internal sealed record Impairment(double Loss, TimeSpan Delay, TimeSpan Jitter, double Reorder)
{
    public override string ToString()
        => $"loss {Loss:P0}, delay {Delay.TotalMilliseconds:0} ms ± {Jitter.TotalMilliseconds:0} ms, reorder {Reorder:P0} (those skip the delay)";
}

/// <summary>
/// netem without sch_netem (this project's firecracker kernels lack it): iptables hands the matched packets of a router to
/// NFQUEUE, and this class, holding a netlink socket made inside the router's namespace, gives each its verdict late.
/// Every packet is dropped with <see cref="Impairment.Loss"/>; of the rest, <see cref="Impairment.Reorder"/> are let
/// through at once and the others after the delay ± jitter, so the prompt ones overtake the held ones, as with
/// 'netem delay D J reorder R'. The packets are forwarded unchanged, addresses and all: the path stays what it was.
/// </summary>
internal sealed partial class NfQueueImpairment : IDisposable
{
    private const int AfNetlink = 16;
    private const int SockRaw = 3;
    private const int NetlinkNetfilter = 12;
    private const int SolSocket = 1;
    private const int SoRcvtimeo = 20;
    private const int SoRcvbufForce = 33;
    private const ushort SubsysQueue = 3;
    private const ushort MsgPacket = 0;
    private const ushort MsgVerdict = 1;
    private const ushort MsgConfig = 2;
    private const ushort NlmsgError = 2;
    private const ushort FlagRequest = 1;
    private const ushort FlagAck = 4;
    private const int NfDrop = 0;
    private const int NfAccept = 1;

    private readonly int _fd;
    private readonly ushort _queue;
    private readonly Impairment _impairment;
    private readonly Random _random = new(11);
    private readonly Lock _gate = new();
    private readonly PriorityQueue<uint, long> _held = new();
    private readonly SemaphoreSlim _due = new(0);
    private readonly Thread _reader;
    private readonly Thread _releaser;
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private volatile bool _stopped;
    private long _seen;
    private long _dropped;
    private long _prompt;
    private long _released;
    private int _seq = 1;
    private volatile string? _fault;

    private NfQueueImpairment(int fd, ushort queue, Impairment impairment)
    {
        _fd = fd;
        _queue = queue;
        _impairment = impairment;
        _reader = new Thread(ReadLoop) { IsBackground = true, Name = $"nfqueue {queue} reader" };
        _releaser = new Thread(ReleaseLoop) { IsBackground = true, Name = $"nfqueue {queue} releaser" };
        _reader.Start();
        _releaser.Start();
    }

    /// <summary>Packets the queue handed over so far.</summary>
    public long Seen => Interlocked.Read(ref _seen);

    /// <summary>Packets dropped (the loss).</summary>
    public long Dropped => Interlocked.Read(ref _dropped);

    /// <summary>Packets let through at once, ahead of held ones (the reordering).</summary>
    public long Prompt => Interlocked.Read(ref _prompt);

    /// <summary>Packets let through after the delay.</summary>
    public long Delayed => Interlocked.Read(ref _released);

    /// <summary>Why the queue stopped working, or null.</summary>
    public string? Fault => _fault;

    public override string ToString()
        => $"nfqueue {_queue} ({_impairment}): {Seen} packets, {Dropped} dropped, {Prompt} let through at once, {Delayed} delayed{(Fault is { } fault ? ", fault: " + fault : "")}";

    /// <summary>Binds NFQUEUE number <paramref name="queue"/> from inside namespace <paramref name="ns"/>; the iptables rules that feed it are the caller's.</summary>
    public static NfQueueImpairment Bind(string ns, ushort queue, Impairment impairment)
    {
        var fd = NetNamespace.Create(ns, () =>
        {
            var socket = Socket(AfNetlink, SockRaw, NetlinkNetfilter);
            return socket >= 0 ? socket : throw new IOException($"socket(AF_NETLINK, NETLINK_NETFILTER) failed with errno {Marshal.GetLastPInvokeError()}");
        });
        try
        {
            // A receive timeout lets the reader notice Dispose; a large buffer keeps bursts from overflowing (ENOBUFS).
            Span<byte> timeout = stackalloc byte[16];
            BinaryPrimitives.WriteInt64LittleEndian(timeout[8..], 200_000);
            SetSockOpt(fd, SolSocket, SoRcvtimeo, ref MemoryMarshal.GetReference(timeout), timeout.Length);
            Span<byte> size = stackalloc byte[4];
            BinaryPrimitives.WriteInt32LittleEndian(size, 4 << 20);
            SetSockOpt(fd, SolSocket, SoRcvbufForce, ref MemoryMarshal.GetReference(size), size.Length);

            // NFQA_CFG_CMD bind; then NFQA_CFG_PARAMS copy only metadata (the id is all a verdict needs) and NFQA_CFG_QUEUE_MAXLEN.
            Request(fd, queue, 1, MsgConfig, [Attribute(1, [1, 0, 0, 2])]);
            Request(fd, queue, 2, MsgConfig, [Attribute(2, [0, 0, 0, 0, 1]), Attribute(3, BigEndian(20_000))]);
        }
        catch
        {
            _ = Close(fd);
            throw;
        }
        return new NfQueueImpairment(fd, queue, impairment);
    }

    private static byte[] BigEndian(int value)
    {
        var bytes = new byte[4];
        BinaryPrimitives.WriteInt32BigEndian(bytes, value);
        return bytes;
    }

    private static byte[] Attribute(ushort type, byte[] payload)
    {
        var bytes = new byte[(4 + payload.Length + 3) & ~3];
        BinaryPrimitives.WriteUInt16LittleEndian(bytes, (ushort)(4 + payload.Length));
        BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(2), type);
        payload.CopyTo(bytes, 4);
        return bytes;
    }

    private static byte[] Message(ushort queue, int seq, ushort type, ushort flags, byte[][] attributes)
    {
        var length = 16 + 4 + attributes.Sum(a => a.Length);
        var bytes = new byte[length];
        BinaryPrimitives.WriteInt32LittleEndian(bytes, length);
        BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(4), (ushort)((SubsysQueue << 8) | type));
        BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(6), flags);
        BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(8), seq);
        // nfgenmsg: AF_UNSPEC, version 0, the queue number big-endian.
        BinaryPrimitives.WriteUInt16BigEndian(bytes.AsSpan(18), queue);
        var offset = 20;
        foreach (var attribute in attributes)
        {
            attribute.CopyTo(bytes, offset);
            offset += attribute.Length;
        }
        return bytes;
    }

    /// <summary>Sends a config request with an ack asked for, and fails with the kernel's errno when it refuses.</summary>
    private static void Request(int fd, ushort queue, int seq, ushort type, byte[][] attributes)
    {
        var message = Message(queue, seq, type, FlagRequest | FlagAck, attributes);
        if (Send(fd, message, message.Length, 0) != message.Length)
        {
            throw new IOException($"netlink send failed with errno {Marshal.GetLastPInvokeError()}");
        }
        var buffer = new byte[8192];
        var n = Recv(fd, buffer, buffer.Length, 0);
        if (n < 20)
        {
            throw new IOException($"no netlink ack for an NFQUEUE config request (errno {Marshal.GetLastPInvokeError()})");
        }
        var error = BinaryPrimitives.ReadInt32LittleEndian(buffer.AsSpan(16));
        if (BinaryPrimitives.ReadUInt16LittleEndian(buffer.AsSpan(4)) != NlmsgError || error != 0)
        {
            throw new IOException($"the kernel refused NFQUEUE config request {seq} with errno {-error}");
        }
    }

    private void ReadLoop()
    {
        var buffer = new byte[1 << 16];
        while (!_stopped)
        {
            var n = Recv(_fd, buffer, buffer.Length, 0);
            if (n <= 0)
            {
                // EAGAIN after the receive timeout, or ENOBUFS after a burst (those packets are then dropped by the kernel).
                continue;
            }
            for (var offset = 0; offset + 16 <= n;)
            {
                var length = BinaryPrimitives.ReadInt32LittleEndian(buffer.AsSpan(offset));
                if (length < 16 || offset + length > n)
                {
                    break;
                }
                if (BinaryPrimitives.ReadUInt16LittleEndian(buffer.AsSpan(offset + 4)) == ((SubsysQueue << 8) | MsgPacket))
                {
                    OnPacket(buffer.AsSpan(offset, length));
                }
                offset += (length + 3) & ~3;
            }
        }
    }

    private void OnPacket(ReadOnlySpan<byte> message)
    {
        // Attributes follow the header and nfgenmsg; NFQA_PACKET_HDR (1) starts with the packet id, big-endian.
        for (var offset = 20; offset + 4 <= message.Length;)
        {
            var length = BinaryPrimitives.ReadUInt16LittleEndian(message[offset..]);
            var type = BinaryPrimitives.ReadUInt16LittleEndian(message[(offset + 2)..]) & 0x3fff;
            if (length < 4)
            {
                return;
            }
            if (type == 1 && length >= 8)
            {
                Decide(BinaryPrimitives.ReadUInt32BigEndian(message[(offset + 4)..]));
                return;
            }
            offset += (length + 3) & ~3;
        }
    }

    private void Decide(uint id)
    {
        Interlocked.Increment(ref _seen);
        double loss, reorder, jitter;
        lock (_gate)
        {
            (loss, reorder, jitter) = (_random.NextDouble(), _random.NextDouble(), _random.NextDouble() * 2 - 1);
        }
        if (loss < _impairment.Loss)
        {
            Interlocked.Increment(ref _dropped);
            Verdict(id, NfDrop);
            return;
        }
        if (reorder < _impairment.Reorder)
        {
            Interlocked.Increment(ref _prompt);
            Verdict(id, NfAccept);
            return;
        }
        var due = _clock.Elapsed + _impairment.Delay + _impairment.Jitter * jitter;
        lock (_gate)
        {
            _held.Enqueue(id, due.Ticks);
        }
        _due.Release();
    }

    private void ReleaseLoop()
    {
        while (!_stopped)
        {
            TimeSpan wait;
            lock (_gate)
            {
                wait = Timeout.InfiniteTimeSpan;
                while (_held.TryPeek(out var id, out var due))
                {
                    var left = TimeSpan.FromTicks(due) - _clock.Elapsed;
                    if (left > TimeSpan.Zero)
                    {
                        wait = left;
                        break;
                    }
                    _held.Dequeue();
                    Interlocked.Increment(ref _released);
                    Verdict(id, NfAccept);
                }
            }
            // Woken early by a new packet (it may be due sooner than the head), or by Dispose.
            _due.Wait(wait == Timeout.InfiniteTimeSpan ? TimeSpan.FromMilliseconds(200) : wait);
        }
    }

    private void Verdict(uint id, int verdict)
    {
        var header = new byte[8];
        BinaryPrimitives.WriteInt32BigEndian(header, verdict);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(4), id);
        var message = Message(_queue, Interlocked.Increment(ref _seq), MsgVerdict, FlagRequest, [Attribute(2, header)]);
        if (Send(_fd, message, message.Length, 0) != message.Length)
        {
            _fault ??= $"verdict for packet {id} failed with errno {Marshal.GetLastPInvokeError()}";
        }
    }

    /// <summary>Lets every held packet through and closes the socket; the iptables rules' --queue-bypass passes packets on from then.</summary>
    public void Dispose()
    {
        if (_stopped)
        {
            return;
        }
        _stopped = true;
        _due.Release();
        _releaser.Join(TimeSpan.FromSeconds(5));
        lock (_gate)
        {
            while (_held.TryDequeue(out var id, out _))
            {
                Verdict(id, NfAccept);
            }
        }
        _reader.Join(TimeSpan.FromSeconds(5));
        _ = Close(_fd);
        _due.Dispose();
    }

#pragma warning disable CA5392 // libc from the system directory, as NetNamespace does.
    [LibraryImport("libc.so.6", EntryPoint = "socket", SetLastError = true)]
    [DefaultDllImportSearchPaths(DllImportSearchPath.SafeDirectories)]
    private static partial int Socket(int domain, int type, int protocol);

    [LibraryImport("libc.so.6", EntryPoint = "setsockopt", SetLastError = true)]
    [DefaultDllImportSearchPaths(DllImportSearchPath.SafeDirectories)]
    private static partial int SetSockOpt(int fd, int level, int name, ref byte value, int length);

    [LibraryImport("libc.so.6", EntryPoint = "send", SetLastError = true)]
    [DefaultDllImportSearchPaths(DllImportSearchPath.SafeDirectories)]
    private static partial nint Send(int fd, byte[] buffer, nint length, int flags);

    [LibraryImport("libc.so.6", EntryPoint = "recv", SetLastError = true)]
    [DefaultDllImportSearchPaths(DllImportSearchPath.SafeDirectories)]
    private static partial nint Recv(int fd, byte[] buffer, nint length, int flags);

    [LibraryImport("libc.so.6", EntryPoint = "close", SetLastError = true)]
    [DefaultDllImportSearchPaths(DllImportSearchPath.SafeDirectories)]
    private static partial int Close(int fd);
#pragma warning restore CA5392
}
