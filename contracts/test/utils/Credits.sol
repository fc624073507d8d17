// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Hashes} from "@openzeppelin/contracts/utils/cryptography/Hashes.sol";

/// Test helper: builds credit words, sorts them and produces Merkle proofs with the same tree convention as
/// Settlement (and attribution/merkle.py). Independent code path from the contract's own `_root`.
library Credits {
    function word(address recipient, uint256 amount) internal pure returns (bytes32) {
        return bytes32((uint256(uint160(recipient)) << 96) | amount);
    }

    /// Insertion sort by recipient (the high 160 bits, so sorting words sorts recipients).
    function sort(bytes32[] memory words) internal pure returns (bytes32[] memory) {
        for (uint256 i = 1; i < words.length; ++i) {
            bytes32 w = words[i];
            uint256 j = i;
            while (j > 0 && uint256(words[j - 1]) > uint256(w)) {
                words[j] = words[j - 1];
                --j;
            }
            words[j] = w;
        }
        return words;
    }

    function leaf(bytes32 w) internal pure returns (bytes32) {
        return keccak256(abi.encodePacked(w));
    }

    function proof(bytes32[] memory words, uint256 index) internal pure returns (bytes32[] memory) {
        bytes32[] memory level = new bytes32[](words.length);
        for (uint256 i; i < words.length; ++i) {
            level[i] = leaf(words[i]);
        }
        bytes32[] memory out = new bytes32[](64);
        uint256 k;
        uint256 n = words.length;
        while (n > 1) {
            uint256 sib = index ^ 1;
            if (sib < n) out[k++] = level[sib];
            uint256 m;
            for (uint256 i; i + 1 < n; i += 2) {
                level[m++] = Hashes.commutativeKeccak256(level[i], level[i + 1]);
            }
            if (n % 2 == 1) level[m++] = level[n - 1];
            n = m;
            index /= 2;
        }
        bytes32[] memory p = new bytes32[](k);
        for (uint256 i; i < k; ++i) {
            p[i] = out[i];
        }
        return p;
    }
}
