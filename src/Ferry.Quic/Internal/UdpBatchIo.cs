using System.Net.Sockets;
using System.Runtime.InteropServices;
using Ferry.Quic.Interop;
using static Ferry.Quic.Interop.LinuxUdp;

namespace Ferry.Quic.Internal;

/// <summary>Gets the datagrams of one receive batch, then the end of the batch.</summary>
internal interface IDatagramReceiver
{
    /// <summary>One datagram; both spans are only valid during the call.</summary>
    void OnDatagram(ReadOnlySpan<byte> datagram, ReadOnlySpan<byte> sockaddr);

    /// <summary>Every datagram of the batch has been handed over.</summary>
    void OnBatchEnd();
}

/// <summary>One packet to send: bytes in pinned memory and where they go.</summary>
internal readonly record struct OutgoingPacket(nint Data, int Length, NativeAddress To);

/// <summary>
/// Linux batched UDP I/O on a blocking socket: recvmmsg (with UDP_GRO when the kernel has it) into native slots,
/// and sendmmsg where runs of equal-size packets to one address go as one UDP_SEGMENT (GSO) message. Without GSO
/// each packet is its own message, still one syscall per batch. Never use the socket's async API alongside: it
/// switches the descriptor to non-blocking.
/// </summary>
internal sealed unsafe class UdpBatchIo : IDisposable
{
    /// <summary>Most packets in one send call and one GSO message (the kernel's UDP_MAX_SEGMENTS).</summary>
    public const int MaxBatch = 64;

    // A GSO message is one UDP datagram before segmentation, so it has to fit the 16-bit UDP length.
    private const int MaxGsoBytes = 65000;
    private const int SlotSize = 65536;
    private const int AddressSpace = 32; // sockaddr_in6 is 28 bytes

    private readonly Socket _socket;
    private readonly int _receiveSlots;
    private readonly byte* _slots;
    private readonly mmsghdr* _messages;
    private readonly iovec* _iov;
    private readonly byte* _names;
    private readonly byte* _control;
    private volatile bool _gso;
    private int _disposed;

    /// <param name="socket">A bound UDP socket that stays in blocking mode.</param>
    /// <param name="bufferBytes">Receive and send buffer size to ask for (forced past rmem_max/wmem_max when privileged).</param>
    /// <param name="useGso">Whether to try UDP_SEGMENT at all.</param>
    /// <param name="useGro">Whether to try UDP_GRO at all.</param>
    /// <param name="receiveSlots">Datagrams (GRO: coalesced runs) per receive call.</param>
    public UdpBatchIo(Socket socket, int bufferBytes, bool useGso = true, bool useGro = true, int receiveSlots = 16)
    {
        if (!IsSupported)
        {
            throw new PlatformNotSupportedException("Batched UDP I/O needs Linux.");
        }

        _socket = socket;
        _receiveSlots = receiveSlots;
        int fd = Fd;
        ReceiveBufferSize = SetBuffer(fd, SO_RCVBUFFORCE, SO_RCVBUF, bufferBytes);
        SendBufferSize = SetBuffer(fd, SO_SNDBUFFORCE, SO_SNDBUF, bufferBytes);

        // A receive timeout lets the receive thread notice shutdown even if nothing wakes it.
        long* tv = stackalloc long[2] { 0, 200_000 };
        setsockopt(fd, SOL_SOCKET, 20 /* SO_RCVTIMEO */, tv, 16);

        int on = 1;
        GroEnabled = useGro && setsockopt(fd, SOL_UDP, UDP_GRO, &on, sizeof(int)) == 0;
        if (useGso)
        {
            // getsockopt(UDP_SEGMENT) succeeds on kernels that can segment (4.18+); sending may still refuse (EIO, EINVAL) and fall back.
            int size = 0;
            uint length = sizeof(int);
            _gso = getsockopt(fd, SOL_UDP, UDP_SEGMENT, &size, &length) == 0;
        }

        _slots = (byte*)NativeMemory.Alloc((nuint)(receiveSlots * SlotSize));
        _messages = (mmsghdr*)NativeMemory.AllocZeroed((nuint)(receiveSlots * sizeof(mmsghdr)));
        _iov = (iovec*)NativeMemory.AllocZeroed((nuint)(receiveSlots * sizeof(iovec)));
        _names = (byte*)NativeMemory.AllocZeroed((nuint)(receiveSlots * AddressSpace));
        _control = (byte*)NativeMemory.AllocZeroed((nuint)(receiveSlots * CmsgSpaceInt));
    }

    /// <summary>True where this class works (Linux).</summary>
    public static bool IsSupported => OperatingSystem.IsLinux();

    /// <summary>Whether sends currently use UDP_SEGMENT.</summary>
    public bool GsoEnabled => _gso;

    /// <summary>Whether the kernel coalesces received runs (UDP_GRO).</summary>
    public bool GroEnabled { get; }

    /// <summary>The receive buffer the kernel granted (as getsockopt reports it: twice the request).</summary>
    public int ReceiveBufferSize { get; }

    /// <summary>The send buffer the kernel granted.</summary>
    public int SendBufferSize { get; }

    private int Fd => (int)_socket.SafeHandle.DangerousGetHandle();

    /// <summary>
    /// Waits (up to the 200 ms socket timeout) for at least one datagram, then hands over everything already queued,
    /// split into the original datagrams. Returns the number of datagrams, 0 on timeout, -1 once the socket is unusable.
    /// </summary>
    public int Receive(IDatagramReceiver receiver)
    {
        bool added = false;
        try
        {
            _socket.SafeHandle.DangerousAddRef(ref added);
            for (int i = 0; i < _receiveSlots; i++)
            {
                _iov[i] = new iovec { iov_base = _slots + ((long)i * SlotSize), iov_len = SlotSize };
                _messages[i].msg_hdr = new msghdr
                {
                    msg_name = _names + (i * AddressSpace),
                    msg_namelen = AddressSpace,
                    msg_iov = _iov + i,
                    msg_iovlen = 1,
                    msg_control = GroEnabled ? _control + (i * CmsgSpaceInt) : null,
                    msg_controllen = GroEnabled ? (nuint)CmsgSpaceInt : 0,
                };
            }

            int n = recvmmsg(Fd, _messages, (uint)_receiveSlots, MSG_WAITFORONE, null);
            if (n < 0)
            {
                int error = Marshal.GetLastPInvokeError();
                return error is EAGAIN or EINTR ? 0 : -1;
            }

            int delivered = 0;
            for (int i = 0; i < n; i++)
            {
                ref var m = ref _messages[i];
                int length = (int)m.msg_len;
                if (length == 0 || (m.msg_hdr.msg_flags & MSG_TRUNC) != 0 || m.msg_hdr.msg_namelen == 0)
                {
                    continue;
                }

                int segment = GroEnabled ? GroSegmentSize(m.msg_hdr) : 0;
                if (segment <= 0)
                {
                    segment = length;
                }

                var data = new ReadOnlySpan<byte>(_iov[i].iov_base, length);
                var name = new ReadOnlySpan<byte>(m.msg_hdr.msg_name, (int)m.msg_hdr.msg_namelen);
                for (int offset = 0; offset < length; offset += segment)
                {
                    receiver.OnDatagram(data.Slice(offset, Math.Min(segment, length - offset)), name);
                    delivered++;
                }
            }

            receiver.OnBatchEnd();
            return delivered;
        }
        catch (ObjectDisposedException)
        {
            return -1;
        }
        finally
        {
            if (added)
            {
                _socket.SafeHandle.DangerousRelease();
            }
        }
    }

    /// <summary>
    /// Sends packets in order with as few messages as possible. A packet the kernel refuses (buffer full, ICMP error)
    /// is dropped, as a congested network would; QUIC recovers. Returns how many packets the kernel took.
    /// </summary>
    public int Send(ReadOnlySpan<OutgoingPacket> packets)
    {
        bool added = false;
        try
        {
            _socket.SafeHandle.DangerousAddRef(ref added);
            int sent = 0;
            for (int start = 0; start < packets.Length; start += MaxBatch)
            {
                sent += SendCore(packets.Slice(start, Math.Min(MaxBatch, packets.Length - start)), _gso);
            }

            return sent;
        }
        catch (ObjectDisposedException)
        {
            return 0;
        }
        finally
        {
            if (added)
            {
                _socket.SafeHandle.DangerousRelease();
            }
        }
    }

    private int SendCore(ReadOnlySpan<OutgoingPacket> packets, bool gso)
    {
        var messages = stackalloc mmsghdr[MaxBatch];
        var iov = stackalloc iovec[MaxBatch];
        var control = stackalloc byte[MaxBatch * CmsgSpaceInt];
        var firstPacket = stackalloc int[MaxBatch + 1];
        int count = 0;
        for (int i = 0; i < packets.Length;)
        {
            var first = packets[i];
            int segments = 1;
            int total = first.Length;
            iov[i] = new iovec { iov_base = (void*)first.Data, iov_len = (nuint)first.Length };
            if (gso)
            {
                // Equal-size segments to one address; only the last may be shorter.
                while (i + segments < packets.Length
                    && packets[i + segments].To == first.To
                    && packets[i + segments].Length <= first.Length
                    && packets[i + segments - 1].Length == first.Length
                    && total + packets[i + segments].Length <= MaxGsoBytes)
                {
                    var p = packets[i + segments];
                    iov[i + segments] = new iovec { iov_base = (void*)p.Data, iov_len = (nuint)p.Length };
                    total += p.Length;
                    segments++;
                }
            }

            ref var m = ref messages[count];
            m = default;
            m.msg_hdr.msg_name = first.To.Pointer;
            m.msg_hdr.msg_namelen = first.To.Length;
            m.msg_hdr.msg_iov = iov + i;
            m.msg_hdr.msg_iovlen = (nuint)segments;
            if (segments > 1)
            {
                var c = (cmsghdr*)(control + (count * CmsgSpaceInt));
                c->cmsg_len = (nuint)(sizeof(cmsghdr) + sizeof(ushort));
                c->cmsg_level = SOL_UDP;
                c->cmsg_type = UDP_SEGMENT;
                *(ushort*)(c + 1) = (ushort)first.Length;
                m.msg_hdr.msg_control = c;
                m.msg_hdr.msg_controllen = CmsgSpaceInt;
            }

            firstPacket[count++] = i;
            i += segments;
        }

        firstPacket[count] = packets.Length;
        int sent = 0;
        for (int done = 0; done < count;)
        {
            int n = sendmmsg(Fd, messages + done, (uint)(count - done), MSG_DONTWAIT);
            if (n > 0)
            {
                for (int k = done; k < done + n; k++)
                {
                    sent += firstPacket[k + 1] - firstPacket[k];
                }

                done += n;
                continue;
            }

            int error = Marshal.GetLastPInvokeError();
            if (error == EINTR)
            {
                continue;
            }

            int from = firstPacket[done], to = firstPacket[done + 1];
            if (to - from > 1 && error is EIO or EINVAL)
            {
                // EIO: the device cannot checksum segments, so stop trying; EINVAL: this message does not fit the route.
                if (error == EIO)
                {
                    _gso = false;
                }

                sent += SendCore(packets[from..to], gso: false);
            }

            done++;
        }

        return sent;
    }

    private static int GroSegmentSize(in msghdr hdr)
    {
        if (hdr.msg_controllen < (nuint)sizeof(cmsghdr) + sizeof(int))
        {
            return 0;
        }

        var c = (cmsghdr*)hdr.msg_control;
        return c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO ? *(int*)(c + 1) : 0;
    }

    private static int SetBuffer(int fd, int forced, int plain, int bytes)
    {
        // The FORCE variants pass rmem_max/wmem_max but need CAP_NET_ADMIN; otherwise the kernel caps the plain request.
        if (setsockopt(fd, SOL_SOCKET, forced, &bytes, sizeof(int)) != 0)
        {
            setsockopt(fd, SOL_SOCKET, plain, &bytes, sizeof(int));
        }

        int granted = 0;
        uint length = sizeof(int);
        getsockopt(fd, SOL_SOCKET, plain, &granted, &length);
        return granted;
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        NativeMemory.Free(_slots);
        NativeMemory.Free(_messages);
        NativeMemory.Free(_iov);
        NativeMemory.Free(_names);
        NativeMemory.Free(_control);
    }
}
