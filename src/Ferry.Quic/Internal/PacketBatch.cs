using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Ferry.Quic.Internal;

/// <summary>
/// Packets one flush produces, written straight into pinned slots so a sink can hand them to the kernel in one call
/// (or copy them out for a relay link). One per thread: a flush runs to completion on its thread without awaiting.
/// </summary>
internal sealed unsafe class PacketBatch
{
    public const int SlotSize = 2048;

    [ThreadStatic]
    private static PacketBatch? t_batch;

    private readonly byte[] _buffer = GC.AllocateUninitializedArray<byte>(UdpBatchIo.MaxBatch * SlotSize, pinned: true);
    private readonly OutgoingPacket[] _packets = new OutgoingPacket[UdpBatchIo.MaxBatch];
    private readonly NativeAddress[] _locals = new NativeAddress[UdpBatchIo.MaxBatch];
    private bool _inUse;

    public int Count { get; private set; }

    public bool IsFull => Count == UdpBatchIo.MaxBatch;

    /// <summary>Where the next packet is written.</summary>
    public byte* NextSlot => (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_buffer)) + (Count * SlotSize);

    /// <summary>Takes this thread's batch (a fresh one if a flush on this thread already holds it).</summary>
    public static PacketBatch Rent()
    {
        var batch = t_batch ??= new PacketBatch();
        if (batch._inUse)
        {
            batch = new PacketBatch();
        }

        batch._inUse = true;
        batch.Count = 0;
        return batch;
    }

    public void Return()
    {
        Clear();
        _inUse = false;
    }

    /// <summary>Records the packet just written at <see cref="NextSlot"/>.</summary>
    public void Add(int length, NativeAddress local, NativeAddress to)
    {
        _packets[Count] = new OutgoingPacket((nint)NextSlot, length, to);
        _locals[Count] = local;
        Count++;
    }

    public ReadOnlySpan<OutgoingPacket> Packets(int start, int count) => _packets.AsSpan(start, count);

    public NativeAddress Local(int index) => _locals[index];

    public void Clear()
    {
        // Drop references so addresses of closed connections are not kept alive by an idle thread.
        Array.Clear(_packets, 0, Count);
        Array.Clear(_locals, 0, Count);
        Count = 0;
    }
}
