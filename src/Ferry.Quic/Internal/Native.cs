using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Ferry.Quic.Interop;

namespace Ferry.Quic.Internal;

/// <summary>ngtcp2's clock: monotonic nanoseconds.</summary>
internal static class Clock
{
    private static readonly double s_nsPerTick = 1e9 / Stopwatch.Frequency;

    public static ulong NowNs() => (ulong)(Stopwatch.GetTimestamp() * s_nsPerTick);
}

/// <summary>An IP endpoint together with its native sockaddr in pinned memory, so ngtcp2 can be handed a pointer.</summary>
internal sealed unsafe class NativeAddress
{
    private readonly byte[] _sockaddr;

    public NativeAddress(IPEndPoint endPoint)
    {
        EndPoint = endPoint;
        SocketAddress = endPoint.Serialize();
        _sockaddr = GC.AllocateArray<byte>(sizeof(sockaddr_in6), pinned: true);
        fixed (byte* p = _sockaddr)
        {
            if (endPoint.AddressFamily == AddressFamily.InterNetwork)
            {
                var sin = (sockaddr_in*)p;
                sin->sin_family = 2; // AF_INET
                sin->sin_port = (ushort)IPAddress.HostToNetworkOrder((short)endPoint.Port);
                endPoint.Address.TryWriteBytes(new Span<byte>(&sin->sin_addr, 4), out _);
                Length = (uint)sizeof(sockaddr_in);
            }
            else
            {
                var sin6 = (sockaddr_in6*)p;
                sin6->sin6_family = 10; // AF_INET6
                sin6->sin6_port = (ushort)IPAddress.HostToNetworkOrder((short)endPoint.Port);
                endPoint.Address.TryWriteBytes(new Span<byte>(sin6->sin6_addr, 16), out _);
                sin6->sin6_scope_id = (uint)endPoint.Address.ScopeId;
                Length = (uint)sizeof(sockaddr_in6);
            }
        }
    }

    public IPEndPoint EndPoint { get; }

    public SocketAddress SocketAddress { get; }

    /// <summary>For a local address: where packets sent from it go.</summary>
    public IPacketSink? Sink { get; init; }

    public unsafe bool Matches(ngtcp2_addr addr) =>
        addr.addrlen == Length && new ReadOnlySpan<byte>(addr.addr, (int)addr.addrlen).SequenceEqual(new ReadOnlySpan<byte>(Pointer, (int)Length));

    public unsafe bool Matches(ReadOnlySpan<byte> sockaddr) =>
        sockaddr.Length == Length && sockaddr.SequenceEqual(new ReadOnlySpan<byte>(Pointer, (int)Length));

    public uint Length { get; }

    public void* Pointer => Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_sockaddr));

    public ngtcp2_addr ToAddr() => new() { addr = Pointer, addrlen = Length };

    /// <summary>Reads a sockaddr written by ngtcp2 back into an endpoint.</summary>
    public static IPEndPoint? FromNative(ngtcp2_addr addr)
    {
        if (addr.addr is null)
        {
            return null;
        }

        var family = *(ushort*)addr.addr;
        if (family == 2)
        {
            var sin = (sockaddr_in*)addr.addr;
            return new IPEndPoint(new IPAddress(new ReadOnlySpan<byte>(&sin->sin_addr, 4)), (ushort)IPAddress.NetworkToHostOrder((short)sin->sin_port));
        }

        if (family == 10)
        {
            var sin6 = (sockaddr_in6*)addr.addr;
            return new IPEndPoint(new IPAddress(new ReadOnlySpan<byte>(sin6->sin6_addr, 16), sin6->sin6_scope_id), (ushort)IPAddress.NetworkToHostOrder((short)sin6->sin6_port));
        }

        return null;
    }
}

/// <summary>A connection ID as a dictionary key (at most 20 bytes).</summary>
internal readonly record struct CidKey(UInt128 Low, uint High, byte Length)
{
    public static CidKey From(ReadOnlySpan<byte> cid)
    {
        Span<byte> padded = stackalloc byte[20];
        padded.Clear();
        cid[..Math.Min(cid.Length, 20)].CopyTo(padded);
        return new CidKey(MemoryMarshal.Read<UInt128>(padded), MemoryMarshal.Read<uint>(padded[16..]), (byte)cid.Length);
    }

    public static unsafe CidKey From(in ngtcp2_cid cid)
    {
        fixed (byte* p = cid.data)
        {
            return From(new ReadOnlySpan<byte>(p, (int)cid.datalen));
        }
    }
}
