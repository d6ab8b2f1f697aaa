using System.Runtime.InteropServices;
using Ferry.Quic.Interop;

namespace Ferry.Quic.Internal;

/// <summary>
/// Outgoing bytes of one stream in native memory: ngtcp2 keeps pointers to stream data until it is
/// acknowledged (it does not copy), so the bytes must neither move nor be freed before the ack.
/// Guarded by the connection lock.
/// </summary>
internal sealed unsafe class SendBuffer : IDisposable
{
    private const int ChunkSize = 64 * 1024;
    private readonly List<nint> _chunks = [];
    private long _baseOffset;   // stream offset of _chunks[0][0]
    private long _ackedOffset;
    private long _sentOffset;
    private long _endOffset;

    public long Buffered => _endOffset - _ackedOffset;

    public long Unsent => _endOffset - _sentOffset;

    public void Append(ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty)
        {
            long capacityEnd = _baseOffset + ((long)_chunks.Count * ChunkSize);
            if (_endOffset == capacityEnd)
            {
                _chunks.Add(ChunkPool.Rent());
                capacityEnd += ChunkSize;
            }

            int inChunk = (int)((_endOffset - _baseOffset) % ChunkSize);
            int n = (int)Math.Min(data.Length, capacityEnd - _endOffset);
            data[..n].CopyTo(new Span<byte>((byte*)_chunks[^1] + inChunk, n));
            _endOffset += n;
            data = data[n..];
        }
    }

    /// <summary>Describes up to vecs.Length contiguous pieces of unsent data.</summary>
    public int GetUnsent(Span<ngtcp2_vec> vecs, out long total)
    {
        int count = 0;
        total = 0;
        long offset = _sentOffset;
        while (count < vecs.Length && offset < _endOffset)
        {
            int chunkIndex = (int)((offset - _baseOffset) / ChunkSize);
            int inChunk = (int)((offset - _baseOffset) % ChunkSize);
            int n = (int)Math.Min(ChunkSize - inChunk, _endOffset - offset);
            vecs[count++] = new ngtcp2_vec { @base = (byte*)_chunks[chunkIndex] + inChunk, len = (nuint)n };
            offset += n;
            total += n;
        }

        return count;
    }

    public void MarkSent(long n) => _sentOffset += n;

    /// <summary>ngtcp2 reports acknowledged data in increasing, contiguous order; whole chunks below it are freed.</summary>
    public void Acknowledge(long upTo)
    {
        _ackedOffset = Math.Max(_ackedOffset, Math.Min(upTo, _endOffset));
        while (_chunks.Count > 0 && _baseOffset + ChunkSize <= _ackedOffset)
        {
            ChunkPool.Return(_chunks[0]);
            _chunks.RemoveAt(0);
            _baseOffset += ChunkSize;
        }
    }

    /// <summary>Forgets unsent data after a reset; memory stays until Dispose because ngtcp2 may still point at sent bytes.</summary>
    public void DropUnsent() => _endOffset = _sentOffset;

    public void Dispose()
    {
        foreach (var chunk in _chunks)
        {
            ChunkPool.Return(chunk);
        }

        _chunks.Clear();
    }

    /// <summary>
    /// Recycles chunks process-wide: freeing each 64 KiB after its ack let glibc hand the pages back and fault them in
    /// again on the next write, which cost more than copying the data.
    /// </summary>
    private static class ChunkPool
    {
        private const int Capacity = 256; // 16 MiB kept at most
        private static readonly Lock s_lock = new();
        private static readonly nint[] s_free = new nint[Capacity];
        private static int s_count;

        public static nint Rent()
        {
            lock (s_lock)
            {
                if (s_count > 0)
                {
                    return s_free[--s_count];
                }
            }

            return (nint)NativeMemory.Alloc(ChunkSize);
        }

        public static void Return(nint chunk)
        {
            lock (s_lock)
            {
                if (s_count < Capacity)
                {
                    s_free[s_count++] = chunk;
                    return;
                }
            }

            NativeMemory.Free((void*)chunk);
        }
    }
}
